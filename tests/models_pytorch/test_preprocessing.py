"""Tests for training augmentation and observation preprocessing (the resolution check)."""

import pytest
import torch

from openpi.models.observation import Observation
from openpi.models_pytorch import preprocessing as prep


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_images(batch: int = 2, height: int = 32, width: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=_generator(seed)) * 2 - 1


def _is_pixelwise_monotone(before: torch.Tensor, after: torch.Tensor) -> bool:
    """True when ``after`` is a non-decreasing function of ``before`` pixel by pixel (i.e. no geometry change)."""
    order = torch.argsort(before.flatten())
    return bool((torch.diff(after.flatten()[order]) >= -1e-5).all())


def test_augment_preserves_shape_dtype_and_range() -> None:
    images = {"base_0_rgb": _random_images(), "left_wrist_0_rgb": _random_images(seed=1)}
    out = prep.augment_images(images, _generator())
    assert list(out) == list(images)
    for name, image in images.items():
        assert out[name].shape == image.shape and out[name].dtype == image.dtype
        assert out[name].min() >= -1 and out[name].max() <= 1
        assert not torch.equal(out[name], image)


def test_wrist_cameras_keep_geometry_and_others_do_not() -> None:
    grey = _random_images(batch=3).mean(dim=1, keepdim=True).expand(3, 3, 32, 40).contiguous()
    out = prep.augment_images({"right_wrist_0_rgb": grey, "base_0_rgb": grey}, _generator())
    for i in range(3):
        assert _is_pixelwise_monotone(grey[i], out["right_wrist_0_rgb"][i])
        assert not _is_pixelwise_monotone(grey[i], out["base_0_rgb"][i])


def test_non_wrist_cameras_are_rotated() -> None:
    # A horizontal ramp has constant columns; cropping and colour jitter keep that, rotation does not.
    ramp = torch.linspace(-0.8, 0.8, 48).expand(16, 3, 48, 48).contiguous()
    out = prep.augment_images({"base_0_rgb": ramp}, _generator())["base_0_rgb"]
    column_spread = out[:, 0, 8:-8, 8:-8].std(dim=1).mean(dim=1)
    assert (column_spread > 1e-3).float().mean() > 0.8


def test_brightness_jitter_range_on_flat_grey_images() -> None:
    # A flat mid-grey image only sees brightness: 0 in [-1, 1] becomes brightness - 1.
    flat = torch.zeros(64, 3, 8, 8)
    out = prep.augment_images({"left_wrist_0_rgb": flat}, _generator())["left_wrist_0_rgb"]
    per_image = out.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    values = per_image[:, 0]
    assert values.min() >= -0.3 - 1e-6 and values.max() <= 0.3 + 1e-6
    assert values.max() - values.min() > 0.3


def test_contrast_jitter_range_on_two_tone_grey_images() -> None:
    # Halves at 0.25 and 0.75 in [0, 1]: after brightness b and contrast c, (high - low) / (high + low) = c / 2.
    two_tone = torch.full((64, 3, 8, 8), -0.5)
    two_tone[..., 4:] = 0.5
    out = (prep.augment_images({"left_wrist_0_rgb": two_tone}, _generator())["left_wrist_0_rgb"] + 1) / 2
    low, high = out[:, 0, 0, 0], out[:, 0, 0, 7]
    contrast = 2 * (high - low) / (high + low)
    assert contrast.min() >= 0.6 - 1e-4 and contrast.max() <= 1.4 + 1e-4
    assert contrast.max() - contrast.min() > 0.4


def test_saturation_jitter_scales_colour_around_grey() -> None:
    # A flat colour image: brightness scales its luma by b, contrast and saturation scale the colour deviation by c * s.
    colour = torch.tensor([0.5, 0.4, 0.4]).view(1, 3, 1, 1).expand(64, 3, 4, 4) * 2 - 1
    out = (prep.augment_images({"left_wrist_0_rgb": colour}, _generator())["left_wrist_0_rgb"] + 1) / 2
    weights = torch.tensor([0.299, 0.587, 0.114])
    luma_in = float(weights @ torch.tensor([0.5, 0.4, 0.4]))
    luma_out = torch.einsum("c,bc->b", weights, out[:, :, 0, 0])
    deviation_ratio = (out[:, 0, 0, 0] - out[:, 1, 0, 0]) / 0.1
    contrast_times_saturation = deviation_ratio / (luma_out / luma_in)
    assert contrast_times_saturation.min() >= 0.3 - 1e-3 and contrast_times_saturation.max() <= 2.1 + 1e-3
    assert contrast_times_saturation.min() < 0.55 and contrast_times_saturation.max() > 1.5


def test_augment_is_deterministic_with_a_seeded_generator() -> None:
    images = {"base_0_rgb": _random_images(), "left_wrist_0_rgb": _random_images(seed=1)}
    first = prep.augment_images(images, _generator(7))
    second = prep.augment_images(images, _generator(7))
    other = prep.augment_images(images, _generator(8))
    for name in images:
        assert torch.equal(first[name], second[name])
        assert not torch.equal(first[name], other[name])


def test_each_sample_gets_its_own_parameters() -> None:
    same = _random_images(batch=1).expand(4, 3, 32, 40).contiguous()
    out = prep.augment_images({"base_0_rgb": same, "left_wrist_0_rgb": same}, _generator())
    for image in out.values():
        for i in range(1, 4):
            assert not torch.allclose(image[0], image[i])


def _observation(height: int, width: int) -> Observation:
    return Observation(
        images={
            "base_0_rgb": _random_images(height=height, width=width),
            "left_wrist_0_rgb": -torch.ones(2, 3, height, width),
        },
        image_masks={"base_0_rgb": torch.ones(2, dtype=torch.bool), "left_wrist_0_rgb": torch.tensor([True, False])},
        state=torch.randn(2, 32),
    )


def test_preprocess_observation_eval_leaves_images_alone() -> None:
    observation = _observation(32, 32)
    out = prep.preprocess_observation(observation, train=False, image_resolution=(32, 32))
    assert out is observation


def test_preprocess_observation_rejects_an_image_the_pipeline_did_not_resize() -> None:
    with pytest.raises(ValueError, match=r"'base_0_rgb' is \(48, 64\) px; the vision tower takes \(32, 32\)"):
        prep.preprocess_observation(_observation(48, 64), train=False, image_resolution=(32, 32))


def test_preprocess_observation_train_augments_deterministically() -> None:
    observation = _observation(32, 32)
    first = prep.preprocess_observation(observation, train=True, image_resolution=(32, 32), generator=_generator(3))
    second = prep.preprocess_observation(observation, train=True, image_resolution=(32, 32), generator=_generator(3))
    for name in observation.images:
        assert first.images[name].shape == (2, 3, 32, 32)
        assert torch.equal(first.images[name], second.images[name])
    assert not torch.equal(first.images["base_0_rgb"], observation.images["base_0_rgb"])

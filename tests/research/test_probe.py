"""The kept-token probe (research/lightvla/probe.py): its token sets and that it decodes only what the set holds."""

import torch

from research.lightvla import probe


def _frames(num_frames: int = 512, num_tokens: int = 8, width: int = 8) -> "probe.Frames":
    """Token 0 carries the offset in its first two channels (fixed ±1 in the others); every other token is noise."""
    generator = torch.Generator().manual_seed(0)
    offset = torch.rand(num_frames, 2, generator=generator) - 0.5
    tokens = torch.randn(num_frames, num_tokens, width, generator=generator)
    tokens[:, 0] = _offset_token(offset, width)
    target = torch.zeros(num_frames, num_tokens, dtype=torch.bool)
    target[:, 0] = True
    kept = torch.zeros_like(target)
    kept[:, :3] = True  # the target's token and two others
    return probe.Frames(tokens, torch.ones_like(target), kept, target, offset)


def _offset_token(offset: torch.Tensor, width: int) -> torch.Tensor:
    signs = torch.tensor([1.0, -1.0]).repeat(width // 2)[: width - 2]
    return torch.cat([offset * 4, signs.expand(len(offset), -1)], dim=1)


def test_random_subset_keeps_the_count_from_the_allowed_entries():
    allowed = torch.tensor([[True, True, False, True, True], [False, True, True, False, False]])
    chosen = probe.random_subset(allowed, torch.tensor([3, 1]), torch.Generator().manual_seed(0))
    assert chosen.sum(dim=1).tolist() == [3, 1]
    assert not (chosen & ~allowed).any()


def test_token_sets_split_the_kept_set_at_the_target():
    frames = _frames(num_frames=4)
    generator = torch.Generator().manual_seed(0)
    sets = {name: probe.token_set(frames, name, generator) for name in probe.TOKEN_SETS}
    assert sets["kept_background"].sum(dim=1).tolist() == [2] * 4
    assert not (sets["background"] & frames.target).any()
    assert not (sets["random_background"] & frames.target).any()
    assert sets["random"].sum(dim=1).tolist() == sets["kept"].sum(dim=1).tolist()
    assert sets["random_background"].sum(dim=1).tolist() == [2] * 4


def test_probe_decodes_the_offset_only_from_a_set_that_holds_it():
    fit, test = _frames(), _frames()
    test.tokens = torch.randn(test.tokens.shape, generator=torch.Generator().manual_seed(1))
    test.tokens[:, 0] = _offset_token(test.offset, test.tokens.shape[-1])
    spread = float(test.offset.std(dim=0).norm())  # the mean predictor's RMSE, about 0.41
    generator = torch.Generator().manual_seed(0)
    errors = {}
    for name in ("kept", "kept_background"):
        fitted = probe.fit_probe(fit, probe.token_set(fit, name, generator), steps=300, seed=0)
        errors[name] = float(probe.probe_errors(fitted, test, probe.token_set(test, name, generator)).square().mean())
    assert errors["kept"] ** 0.5 < 0.25 * spread
    assert errors["kept_background"] ** 0.5 > 0.8 * spread

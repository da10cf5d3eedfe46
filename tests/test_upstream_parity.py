"""What published checkpoints and ported upstream code depend on behaves as in upstream openpi.

Each test names the upstream behaviour it pins and where upstream defines it (paths in
github.com/Physical-Intelligence/openpi). The deliberate differences are listed, with their reasons, in
docs/upstream.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openpi import transforms
from openpi.shared import normalize

DUMMY = "width=64,depth=1,mlp_dim=128,num_heads=8,num_kv_heads=1,head_dim=16"
LORA = f"{DUMMY},lora_rank=2,lora_alpha=2"


def _stats(dim: int, offset: float = 0.0) -> normalize.NormStats:
    return normalize.NormStats(
        mean=np.full(dim, offset), std=np.full(dim, 2.0), q01=np.full(dim, -4.0), q99=np.full(dim, 4.0)
    )


# ------------------------------------------------------------------------------------- 1. π0.5's discrete state
def test_state_below_minus_one_is_bin_minus_one(tmp_path: Path):
    """models/tokenizer.py: ``np.digitize(state, np.linspace(-1, 1, 257)[:-1]) - 1``, unclipped: below -1 is bin
    -1, at or above the last edge (1 - 2/256) is 255."""
    from openpi.models import tokenizer
    from tests.helpers.lerobot import write_tokenizer

    state = np.array([-1.5, -1.0, -1e-6, 0.0, 0.999, 1.5])
    np.testing.assert_array_equal(tokenizer.discretize_state(state), [-1, 0, 127, 128, 255, 255])
    tok = tokenizer.PaligemmaTokenizer(max_len=64, model_path=write_tokenizer(tmp_path))
    ids, mask = tok.tokenize("move", state[:2])
    assert tok.decode(ids[mask]) == "Task: move, State: -1 0;\nAction: "


# ---------------------------------------------------------------------------------------------- 2. resize_with_pad
def test_resize_with_pad_truncates_size_and_padding():
    """openpi_client/image_tools.py (the training pipeline's ResizeImages): ``int(cur / ratio)`` for the resized
    size and ``int((target - resized) / 2)`` for the padding, so 480x848 -> 224x224 keeps 126 rows from row 49."""
    from openpi.shared import image_tools

    image = np.full((480, 848, 3), 200, np.uint8)
    for out in (
        image_tools.resize_with_pad(image, 224, 224),
        transforms.ResizeImages(224, 224)({"image": {"cam": image}})["image"]["cam"],
    ):
        content = np.flatnonzero(out[:, 112, 0])
        assert (content[0], len(content)) == (49, 126)
        assert np.all(out[49:175] == 200) and not out[:49].any() and not out[175:].any()


def test_resize_with_pad_accepts_batches():
    """openpi_client/image_tools.py: ``[..., H, W, C]`` in, ``[..., height, width, C]`` out, each image resized."""
    from openpi.shared import image_tools

    images = np.zeros((2, 3, 30, 40, 3), np.uint8)
    images[1, 2] = 255
    out = image_tools.resize_with_pad(images, 16, 16)
    assert out.shape == (2, 3, 16, 16, 3) and out.dtype == np.uint8
    assert not out[0].any() and out[1, 2, 2:14].min() == 255 and not out[1, :2].any()
    assert image_tools.resize_with_pad(images, 30, 40) is images

"""What published checkpoints and ported upstream code depend on behaves as in upstream openpi.

Each test names the upstream behaviour it pins and where upstream defines it (paths in
github.com/Physical-Intelligence/openpi). The deliberate differences are listed, with their reasons, in
docs/upstream.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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

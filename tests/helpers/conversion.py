"""Conversion helpers shared by the tests: odd-sized configs, random published parameter trees written as orbax
checkpoints, and a converted reference checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from openpi.conversion import convert
from openpi.models import param_layout, variants
from openpi.models.pi0_config import Pi0Config
from openpi.models.reference_fixture import ReferenceFixture

LM_HEADS = ("paligemma_with_expert.paligemma.lm_head.weight", "paligemma_with_expert.gemma_expert.lm_head.weight")
LLM = "paligemma_with_expert.paligemma.model.language_model.layers.1"
EXPERT = "paligemma_with_expert.gemma_expert.model.layers.1"
VISION = "paligemma_with_expert.paligemma.model.vision_tower.vision_model"


def odd_config(pi05: bool) -> Pi0Config:
    """Small dimensions chosen so that every axis has a distinct size and heads*head_dim != width."""
    llm = variants.GemmaConfig(width=24, depth=2, mlp_dim=20, num_heads=4, num_kv_heads=2, head_dim=10)
    expert = variants.GemmaConfig(width=16, depth=2, mlp_dim=12, num_heads=4, num_kv_heads=2, head_dim=10)
    vision = variants.SiglipConfig(
        hidden_size=12, num_hidden_layers=2, num_attention_heads=3, intermediate_size=20, patch_size=14, image_size=28
    )
    return Pi0Config(
        pi05=pi05,
        paligemma_variant=variants.spell_variant(llm),
        action_expert_variant=variants.spell_variant(expert),
        vision_variant=variants.spell_variant(vision),
        vocab_size=50,
        action_dim=6,
        action_horizon=4,
        max_token_len=8,
        dtype="float32",
    )


def random_params(config: Pi0Config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        path: rng.standard_normal(shape).astype(np.float32)
        for path, shape in param_layout.published_shapes(config).items()
    }


def write_orbax(directory: Path, flat: dict[str, np.ndarray], value_wrapped: bool = False) -> Path:
    """Saves ``flat`` as ``directory/params`` the way JAX checkpoints are laid out; returns ``directory``."""
    tree: dict = {}
    for path, array in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = {"value": array} if value_wrapped else array
    ocp.PyTreeCheckpointer().save((directory / "params").absolute(), {"params": tree})
    return directory


def jax_checkpoint_and_conversion(fixture: ReferenceFixture, tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint folder of the fixture's orbax tree with LIBERO norm stats, and its float32 PyTorch conversion."""
    from openpi.shared import normalize

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "params").symlink_to(fixture.checkpoint_dir / "params", target_is_directory=True)
    stats = normalize.NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8))
    normalize.save(checkpoint / "assets" / "physical-intelligence" / "libero", {"state": stats, "actions": stats})
    return checkpoint, convert.convert_checkpoint(checkpoint, fixture.config, tmp_path / "converted", "float32").parent

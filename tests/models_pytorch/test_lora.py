"""LoRA and freezing: adapters start from a base checkpoint, only the intended parameters train, merging is exact,
and the low-memory configs match upstream's."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from openpi.cli import merge_lora
from openpi.models import variants
from openpi.models.observation import random_observation
from openpi.models.pi0_config import tiny_config
from openpi.models_pytorch import lora, weights
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.training import checkpoints, freezing, trainer
from openpi.training import config as _config
from tests.helpers.models import randomized
from tests.helpers.training import SMALL_VISION, small_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DUMMY = "width=64,depth=2,mlp_dim=128,num_heads=8,num_kv_heads=1,head_dim=16"
BASE = tiny_config(paligemma_variant=DUMMY, action_expert_variant=DUMMY, action_horizon=4)
ADAPTED = dataclasses.replace(
    BASE,
    paligemma_variant=f"{DUMMY},lora_rank=4,lora_alpha=4",
    action_expert_variant=f"{DUMMY},lora_rank=8,lora_alpha=16",
)


def _actions(model: PI0Pytorch) -> torch.Tensor:
    torch.manual_seed(0)
    observation = random_observation(BASE, batch_size=2)
    noise = torch.randn(2, BASE.action_horizon, BASE.action_dim)
    with torch.no_grad():
        return model.eval().sample_actions(observation, noise=noise, num_steps=2)


def _adapted_from(base: PI0Pytorch, directory: Path) -> PI0Pytorch:
    weights.save_weights(base, directory)
    adapted = PI0Pytorch(ADAPTED)
    weights.load_weights(adapted, directory, keep_if_missing=lora.is_lora_parameter)
    return adapted


def test_upstream_lora_variants():
    llm, expert = variants.get_gemma_config("gemma_2b_lora"), variants.get_gemma_config("gemma_300m_lora")
    assert (llm.lora_rank, llm.lora_alpha, expert.lora_rank, expert.lora_alpha) == (16, 16, 32, 32)
    assert dataclasses.replace(llm, lora_rank=0, lora_alpha=0) == variants.get_gemma_config("gemma_2b")
    for name in ("pi0_libero_low_mem_finetune_pytorch", "pi05_libero_low_mem_finetune_pytorch"):
        config = _config.get_config(name)
        assert (config.model.paligemma_variant, config.model.action_expert_variant) == (
            "gemma_2b_lora",
            "gemma_300m_lora",
        )
        assert config.freeze_filter == "lora" and config.ema_decay is None and not config.allow_random_init


def test_adapters_with_zero_b_give_the_base_model(tmp_path: Path):
    torch.manual_seed(0)
    base = randomized(PI0Pytorch(BASE))
    adapted = _adapted_from(base, tmp_path)
    adapters = [m for m in adapted.modules() if isinstance(m, lora.LoRALinear)]
    assert len(adapters) == 7 * 2 * 2  # q, k, v, o, gate, up, down x 2 layers x 2 experts
    assert not torch.allclose(_actions(adapted), _actions(base)), "upstream's init: B ~ normal(0, 0.01), not zero"
    with torch.no_grad():
        for module in adapters:
            module.lora_b.zero_()
    torch.testing.assert_close(_actions(adapted), _actions(base), rtol=1e-6, atol=1e-6)


def test_merged_weights_give_the_adapted_model_outputs_in_a_base_model(tmp_path: Path):
    torch.manual_seed(0)
    adapted = _adapted_from(randomized(PI0Pytorch(BASE)), tmp_path / "base")
    with torch.no_grad():
        for module in adapted.modules():
            if isinstance(module, lora.LoRALinear):
                module.lora_b.normal_(std=0.2)  # a trained adapter: far from the init
    merged = PI0Pytorch(BASE)
    merged.load_state_dict(lora.merge_lora(adapted), strict=True)
    expected = _actions(adapted)
    torch.testing.assert_close(_actions(merged), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_merge_script_writes_a_plain_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    adapted = _adapted_from(randomized(PI0Pytorch(BASE)), tmp_path / "base")
    weights.save_weights(adapted, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "assets" / "robot").mkdir(parents=True)
    (tmp_path / "ckpt" / "assets" / "robot" / "norm_stats.json").write_text("{}")
    config = _config.TrainConfig(name="lora_test", model=ADAPTED)
    monkeypatch.setattr(merge_lora._config, "get_config", {"lora_test": config}.__getitem__)
    merge_lora.merge(merge_lora.Args(config="lora_test", checkpoint=tmp_path / "ckpt", output=tmp_path / "merged"))
    plain = PI0Pytorch(BASE)
    weights.load_weights(plain, tmp_path / "merged")
    torch.testing.assert_close(_actions(plain), _actions(adapted), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "merged" / "assets" / "robot" / "norm_stats.json").is_file()


def test_lora_training_updates_only_adapters_vision_and_projections(tmp_path: Path):
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    small = dataclasses.replace(BASE, vision_variant=SMALL_VISION, max_token_len=64)
    weights.save_weights(randomized(PI0Pytorch(small)), base_dir)
    model = dataclasses.replace(ADAPTED, vision_variant=SMALL_VISION, max_token_len=64)
    config = small_config(
        "debug",
        tmp_path,
        model=model,
        batch_size=2,
        num_train_steps=2,
        save_interval=2,
        keep_period=None,
        pytorch_weight_path=str(base_dir),
        freeze_filter="lora",
    )
    start = PI0Pytorch(model)
    weights.load_weights(start, base_dir, keep_if_missing=lora.is_lora_parameter)
    before = start.state_dict()
    trained = trainer.train(config).model.state_dict()
    frozen_pattern = freezing.freeze_pattern("lora", model)
    changed = {key for key in before if not torch.equal(before[key], trained[key])}
    frozen = {key for key in before if re.search(frozen_pattern, key)}
    assert frozen and not (changed & frozen), "a frozen base weight changed"
    assert any(lora.is_lora_parameter(key) for key in changed)
    assert any("vision_tower" in key for key in changed) and "action_out_proj.weight" in changed
    optimizer_state = torch.load(config.checkpoint_dir / "2" / checkpoints.OPTIMIZER_FILENAME, weights_only=True)
    names = [name for name, _ in PI0Pytorch(model).named_parameters()]
    trainable = [name for name in names if not re.search(frozen_pattern, name)]
    managed = [index for group in optimizer_state["param_groups"] for index in group["params"]]
    assert len(managed) == len(trainable) < len(names), "the optimizer holds frozen parameters"


def test_freeze_filters_refuse_bad_patterns():
    model = PI0Pytorch(BASE)
    with pytest.raises(ValueError, match="matches no parameter"):
        freezing.freeze_parameters(model, "^nothing_by_this_name")
    with pytest.raises(ValueError, match="matches every parameter"):
        freezing.freeze_parameters(model, ".")
    with pytest.raises(ValueError, match="neither a preset"):
        freezing.freeze_parameters(model, "(")
    with pytest.raises(ValueError, match="has LoRA"):
        freezing.freeze_parameters(model, "lora")
    frozen = freezing.freeze_parameters(model, "vision")
    assert frozen and all("vision_tower" in n or "multi_modal_projector" in n for n in frozen)

"""The FLOPs account (openpi.models.flops) against torch's own counter on real forward and backward passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from openpi.models import flops
from openpi.models.observation import random_observation
from openpi.models.pi0_config import Pi0Config, mid_config, tiny_config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOLERANCE = 1e-3


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Both products of an attention, every query head against every key (``[b, h, s, d]`` or ``[b, s, d]``)."""
    *_, s_k, d = key
    b, h, s_q = (query[0], 1, query[1]) if len(query) == 3 else query[:3]
    return 4 * b * h * s_q * s_k * d


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _cpu_attention(query, key, value) * 5 // 2  # the scores again, then four products of gradients


# torch counts the fused attention kernels of CUDA, not the CPU one this model runs here.
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}
CONFIGS = {
    "tiny": tiny_config(),
    "tiny_pi0": tiny_config(pi05=False),
    "tiny_budget": tiny_config(token_pruning_enabled=True, token_prune_keep_ratio=0.25),
    "tiny_union": tiny_config(token_pruning_enabled=True),
    "tiny_budget_trained": tiny_config(
        token_pruning_enabled=True, token_prune_keep_ratio=0.1, token_prune_budget_training=True
    ),
    "tiny_gated": tiny_config(
        token_pruning_enabled=True,
        token_prune_keep_ratio=0.25,
        token_prune_budget_training=True,
        token_prune_gate_dropped_patches=True,
    ),
    "tiny_gated_sampled": tiny_config(
        token_pruning_enabled=True,
        token_prune_keep_ratio=0.25,
        token_prune_budget_training=True,
        token_prune_gate_dropped_patches=True,
        token_prune_gate_dropped_sample=0.25,
    ),
    "mid": mid_config(),
    "mid_budget": mid_config(token_pruning_enabled=True, token_prune_keep_ratio=0.1, token_prune_kept_multiple=16),
}
VALID_PROMPT, PROMPT_COLUMNS = 20, 32  # trimmed to a multiple of 16


def _model_and_inputs(config: Pi0Config):
    config = dataclasses.replace(config, max_token_len=48)
    torch.manual_seed(0)
    model = PI0Pytorch(config)
    observation = random_observation(config, 2, valid_prompt_tokens=VALID_PROMPT)
    return model, observation


def _counted(run) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        run()
    return counter.get_total_flops()


def _workload(config: Pi0Config) -> flops.Workload:
    kept = None if config.token_prune_keep_ratio or not config.token_pruning_enabled else 3 * 256
    return flops.Workload(prompt_tokens=PROMPT_COLUMNS, kept_patches=kept, num_steps=3, batch_size=2)


@pytest.mark.parametrize("name", CONFIGS)
def test_sample_actions_flops_match_torchs_count(name):
    config = CONFIGS[name]
    model, observation = _model_and_inputs(config)
    model.eval()
    if name == "tiny_union":  # its kept count depends on the scores: count the one this call keeps
        model.encode_prefix(observation)
        kept = int(model.pruner.last_selection.mask.shape[1])
        workload = dataclasses.replace(_workload(config), kept_patches=kept)
    else:
        workload = _workload(config)
    measured = _counted(lambda: model.sample_actions(observation, num_steps=3))
    counted = flops.sample_flops(config, workload).total
    assert counted == pytest.approx(measured, rel=TOLERANCE)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_step_flops_match_torchs_count(name, checkpointing):
    config = CONFIGS[name]
    model, observation = _model_and_inputs(config)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    actions = torch.randn(2, config.action_horizon, config.action_dim)
    uniform = torch.rand(2, 3 * 256, 3 * 256, generator=torch.Generator().manual_seed(0))  # one selection draw
    workload = _workload(config)
    if config.token_pruning_enabled and not config.token_prune_budget_training:  # the distinct votes it trains on
        model.set_token_pruner_collect_stats(True)
        model(observation, actions, prune_uniform=uniform)
        kept = int(model.get_token_pruning_stats()["train_prefix_tokens_mean"]) - PROMPT_COLUMNS
        workload = dataclasses.replace(workload, kept_patches=kept)
    uniform = uniform if config.token_pruning_enabled else None
    measured = _counted(lambda: model(observation, actions, prune_uniform=uniform).mean().backward())
    counted = flops.train_flops(config, workload, gradient_checkpointing=checkpointing)
    assert counted.total - _unfused_on_cpu(config, counted) == pytest.approx(measured, rel=TOLERANCE)


def _unfused_on_cpu(config: Pi0Config, counted: flops.TrainFlops) -> float:
    """What the account counts beyond torch here: the account takes every attention's backward as a fused kernel's
    (2.5x its forward, the scores recomputed); on the CPU, the pruner's attention (3-D inputs) and the joint attention
    under a trained gate (an attention bias that needs a gradient) run unfused, keeping the scores (2x)."""
    unfused = [op for op in counted.ops if op.attention and op.part == flops.PRUNER]
    if config.token_pruning_enabled and config.token_prune_budget_training:
        unfused += [op for op in counted.ops if op.attention and op.part == flops.LANGUAGE_MODEL]
    return 0.5 * sum(op.flops for op in unfused)


def test_pruning_shortens_the_prefix_and_the_denoising_reads_a_smaller_cache():
    unpruned = flops.sample_flops(Pi0Config(pi05=True))
    pruned = flops.sample_flops(Pi0Config(pi05=True, token_pruning_enabled=True, token_prune_keep_ratio=0.1))
    assert (unpruned.prefix_length, pruned.prefix_length) == (768 + 32, 77 + 32)
    assert pruned.prefix.by_part[flops.VISION] == unpruned.prefix.by_part[flops.VISION], "the tower sees every patch"
    assert pruned.prefix.by_part[flops.LANGUAGE_MODEL] < 0.2 * unpruned.prefix.by_part[flops.LANGUAGE_MODEL]
    assert pruned.denoise.total < unpruned.denoise.total
    with pytest.raises(ValueError, match="data-dependent"):
        flops.sample_flops(Pi0Config(pi05=True, token_pruning_enabled=True))


def _tiny_fast(keep_ratio: float | None) -> Pi0FastConfig:
    tiny = tiny_config()
    return Pi0FastConfig(
        paligemma_variant=tiny.paligemma_variant,
        vision_variant=tiny.vision_variant,
        vocab_size=tiny.vocab_size,
        max_token_len=PROMPT_COLUMNS,
        dtype="float32",
        max_decoding_steps=6,
        token_pruning_enabled=keep_ratio is not None,
        token_prune_keep_ratio=keep_ratio,
    )


@pytest.mark.parametrize("keep_ratio", [None, 0.25, 0.1])
def test_fast_decode_flops_match_torchs_count(keep_ratio):
    config = _tiny_fast(keep_ratio)
    torch.manual_seed(0)
    model = Pi0FastPytorch(config).eval()
    observation = random_observation(tiny_config(max_token_len=PROMPT_COLUMNS), 2, valid_prompt_tokens=VALID_PROMPT)
    steps = []
    measured = _counted(lambda: steps.append(model.sample_tokens(observation).steps))
    workload = flops.Workload(prompt_tokens=PROMPT_COLUMNS, num_steps=steps[0], batch_size=2)
    counted = flops.decode_flops(config, workload)
    assert counted.decode_passes == steps[0] - 1 > 0
    assert counted.total == pytest.approx(measured, rel=TOLERANCE)


def test_fast_pruning_shortens_the_prefix_and_every_decode_pass():
    base = Pi0FastConfig(max_token_len=180)
    workload = flops.Workload(prompt_tokens=180, num_steps=40)
    unpruned = flops.decode_flops(base, workload)
    pruned = flops.decode_flops(
        Pi0FastConfig(max_token_len=180, token_pruning_enabled=True, token_prune_keep_ratio=0.1), workload
    )
    assert (unpruned.prefix_length, pruned.prefix_length) == (768 + 180, 77 + 180)
    assert pruned.prefill.by_part[flops.VISION] == unpruned.prefill.by_part[flops.VISION]
    assert pruned.per_decode_pass < unpruned.per_decode_pass
    with pytest.raises(ValueError, match="num_steps"):
        flops.decode_flops(base, flops.Workload(num_steps=0))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fast_training_step_flops_match_torchs_count(checkpointing):
    config = _tiny_fast(None)
    torch.manual_seed(0)
    model = Pi0FastPytorch(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    observation = random_observation(tiny_config(max_token_len=PROMPT_COLUMNS), 2, valid_prompt_tokens=VALID_PROMPT)
    postfix = (torch.arange(PROMPT_COLUMNS) >= VALID_PROMPT // 2)[None].expand(
        2, -1
    ) & observation.tokenized_prompt_mask
    observation = dataclasses.replace(observation, token_ar_mask=postfix.long(), token_loss_mask=postfix)
    measured = _counted(lambda: model(observation).mean().backward())
    workload = flops.Workload(prompt_tokens=PROMPT_COLUMNS, batch_size=2)
    counted = flops.fast_train_flops(config, workload, gradient_checkpointing=checkpointing)
    assert counted.total == pytest.approx(measured, rel=TOLERANCE)

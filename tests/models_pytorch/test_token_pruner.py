"""Tests of the LightVLA image-token pruner (openpi.models_pytorch.token_pruner)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from openpi.models import pi0_config
from openpi.models_pytorch import token_pruner
from openpi.models_pytorch.token_pruner import ImageTokenPruner, PrunedPatches

STAT_KEYS = {
    "kept_tokens_overall_mean",
    "kept_tokens_overall_min",
    "kept_tokens_overall_max",
    "kept_ratio_overall_mean",
    "task_valid_len_mean",
    "argmax_union_mean",
    "argmax_top1_share_mean",
    "patches_std_mean",
    "task_std_mean",
    "queries_std_mean",
    "query_cosine_before_norm_mean",
    "query_cosine_after_norm_mean",
    "score_abs_max_det_mean",
    "score_top1_gap_det_mean",
}
NOISY_STAT_KEYS = {"kept_tokens_overall_mean_noisy", "argmax_union_mean_noisy", "argmax_top1_share_mean_noisy"}


def make_pruner(*, center_patches: bool = False, dedup_training: bool = False, **settings) -> ImageTokenPruner:
    """A pruner built from a model config with these ``token_prune_*`` settings (without the prefix). The tests'
    baseline is LightVLA's original scoring (no centring) with one row per vote."""
    fields = {"center_patches": center_patches, "dedup_training": dedup_training, **settings}
    config = pi0_config.tiny_config(token_pruning_enabled=True, **{f"token_prune_{k}": v for k, v in fields.items()})
    return ImageTokenPruner(config)


def make_inputs(batch=2, num_patches=32, task_len=8, dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    patches = torch.randn(batch, num_patches, dim, generator=gen)
    task = torch.randn(batch, task_len, dim, generator=gen)
    task_mask = torch.ones(batch, task_len, dtype=torch.bool)
    patch_mask = torch.ones(batch, num_patches, dtype=torch.bool)
    positions = (torch.arange(num_patches) + 3).expand(batch, num_patches).clone()
    return patches, task, task_mask, patch_mask, positions


def rms(x):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def reference_scores(patches, task, task_mask, patch_mask):
    """Independent re-statement of the scores: S = rms(attn(P, T, T)) P^T / sqrt(D), invalid columns -inf."""
    p, t = rms(patches.double()), rms(task.double())
    scale = math.sqrt(patches.shape[-1])
    logits = (p @ t.transpose(1, 2) / scale).masked_fill(~task_mask[:, None, :], -math.inf)
    queries = rms(logits.softmax(-1) @ t)
    return (queries @ p.transpose(1, 2) / scale).masked_fill(~patch_mask[:, None, :], -math.inf)


def run(pruner, inputs, *, train):
    pruner.train(train)
    return pruner(*inputs)


# --- train mode --------------------------------------------------------------------------------------------------


def test_train_output_is_each_rows_voted_patch_with_its_position():
    inputs = make_inputs()
    patches, _, _, _, positions = inputs
    out = run(make_pruner(noise_scale=0.0), inputs, train=True)
    choice = reference_scores(*inputs[:4]).argmax(-1)
    assert isinstance(out, PrunedPatches)
    assert out.tokens.shape == patches.shape
    assert torch.equal(out.kept_indices, choice)
    torch.testing.assert_close(out.tokens, patches.gather(1, choice[..., None].expand_as(patches)))
    assert torch.equal(out.positions, positions.gather(1, choice))
    assert out.mask.all()


def test_train_noise_changes_votes_only_within_noise_scale():
    inputs = make_inputs(num_patches=64)
    patches = inputs[0]
    torch.manual_seed(0)
    out = run(make_pruner(noise_scale=0.5), inputs, train=True)
    scores = reference_scores(*inputs[:4])
    chosen = scores.gather(-1, out.kept_indices[..., None])[..., 0]
    assert (chosen >= scores.amax(-1) - 0.5 - 1e-5).all()
    assert (out.kept_indices != scores.argmax(-1)).any(), "noise of 0.5 should flip some votes"
    torch.testing.assert_close(out.tokens, patches.gather(1, out.kept_indices[..., None].expand_as(patches)))


def test_train_gradient_flows_through_softmax_of_scores():
    patches, *rest = make_inputs()
    patches.requires_grad_(True)
    out = run(make_pruner(noise_scale=0.0), (patches, *rest), train=True)
    upstream = torch.randn_like(out.tokens)
    (out.tokens * upstream).sum().backward()
    grad = patches.grad
    assert grad is not None and torch.isfinite(grad).all()
    # A pure gather would give zero gradient to patches no row voted for; the straight-through soft path does not.
    unvoted = torch.ones_like(rest[2])
    unvoted.scatter_(1, out.kept_indices, False)
    assert unvoted.any()
    assert grad[unvoted].abs().sum(-1).gt(0).all()
    gather_only = torch.zeros_like(patches).scatter_add_(1, out.kept_indices[..., None].expand_as(patches), upstream)
    assert not torch.allclose(grad, gather_only)


@pytest.mark.parametrize("train", [True, False])
def test_bfloat16_patches_keep_their_dtype(train):
    patches, *rest = make_inputs()
    out = run(make_pruner(noise_scale=0.0), (patches.bfloat16(), *rest), train=train)
    assert out.tokens.dtype == torch.bfloat16
    expected = patches.bfloat16().gather(1, out.kept_indices[..., None].expand(-1, -1, 32)) * out.mask[..., None]
    torch.testing.assert_close(out.tokens, expected)


def test_train_ignores_budgets_and_keeps_length():
    inputs = make_inputs()
    out = run(make_pruner(noise_scale=0.0, keep_tokens=2), inputs, train=True)
    assert out.tokens.shape == inputs[0].shape


# --- budget training -----------------------------------------------------------------------------------------


def test_budget_training_keeps_what_eval_keeps_with_a_zero_valued_gate():
    inputs = make_inputs(batch=2, num_patches=48)
    inputs[3][1, 40:] = False  # sample 1: 40 valid patches
    pruner = make_pruner(noise_scale=0.0, keep_ratio=0.25, budget_training=True)
    trained, served = run(pruner, inputs, train=True), run(pruner, inputs, train=False)
    assert trained.mask.sum(1).tolist() == served.mask.sum(1).tolist() == [12, 10]
    for name in ("tokens", "mask", "positions", "kept_indices"):
        assert torch.equal(getattr(trained, name), getattr(served, name)), name
    assert served.key_bias is None
    assert trained.key_bias.shape == trained.mask.shape and torch.equal(trained.key_bias, torch.zeros(2, 12))


def test_budget_training_ranks_the_noisy_votes_and_scores():
    inputs = make_inputs(batch=1, num_patches=48)
    uniform = torch.rand(1, 48, 48, generator=torch.Generator().manual_seed(3))
    pruner = make_pruner(noise_scale=2.0, keep_tokens=9, budget_training=True).train()
    out = pruner(*inputs, uniform=uniform)
    noisy = reference_scores(*inputs[:4])[0].float() + 2.0 * uniform[0]
    votes = torch.bincount(noisy.argmax(-1), minlength=48)
    best = noisy.amax(0)
    expected = sorted(sorted(range(48), key=lambda j: (-votes[j].item(), -best[j].item(), j))[:9])
    assert out.kept_indices[0].tolist() == expected
    assert expected != run(make_pruner(keep_tokens=9), inputs, train=False).kept_indices[0].tolist()


def test_budget_training_gate_passes_the_gradient_of_the_soft_votes():
    patches, task, task_mask, patch_mask, positions = make_inputs(batch=2, num_patches=32)
    patch_mask[0, 28:] = False
    upstream = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))

    def grads(use_pruner: bool):
        p, t = patches.clone().requires_grad_(True), task.clone().requires_grad_(True)
        pruner = make_pruner(noise_scale=0.0, keep_tokens=8, budget_training=True).train()
        out = pruner(p, t, task_mask, patch_mask, positions)
        if use_pruner:
            gate = out.key_bias
        else:  # independent: soft votes of the valid rows from the restated scores, at the kept patches
            soft = reference_scores(p, t, task_mask, patch_mask).softmax(-1) * patch_mask[..., None]
            gate = soft.sum(1).gather(1, out.kept_indices).float()
        (gate * upstream).sum().backward()
        return p.grad, t.grad

    (patch_grad, task_grad), (want_patch, want_task) = grads(True), grads(False)
    assert patch_grad.abs().sum() > 0 and task_grad.abs().sum() > 0
    torch.testing.assert_close(patch_grad, want_patch, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(task_grad, want_task, rtol=1e-4, atol=1e-5)


def attend(pruned: PrunedPatches, query: torch.Tensor) -> torch.Tensor:
    """A one-query attention over the pruner's tokens with its key bias: what the prefix does with them, ``[B, D]``."""
    logits = (pruned.tokens @ query[:, :, None])[..., 0] / math.sqrt(query.shape[-1]) + pruned.key_bias
    weights = logits.masked_fill(~pruned.mask, -math.inf).softmax(-1)
    return (weights[..., None] * pruned.tokens).sum(1)


def test_gating_dropped_patches_keeps_the_budgets_forward():
    inputs = make_inputs(batch=2, num_patches=32)
    inputs[3][0, 28:] = False
    query = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    budget = make_pruner(noise_scale=0.0, keep_tokens=8, budget_training=True).train()
    gated = make_pruner(noise_scale=0.0, keep_tokens=8, budget_training=True, gate_dropped_patches=True).train()
    kept, everything = budget(*inputs), gated(*inputs)
    assert torch.equal(everything.tokens, inputs[0]) and torch.equal(everything.mask, inputs[3])
    assert torch.equal(everything.positions, inputs[4])
    dropped = torch.ones_like(inputs[3]).scatter_(1, kept.kept_indices, False) & inputs[3]
    weight = torch.where(dropped, token_pruner.DROPPED_KEY_WEIGHT, 1.0)
    torch.testing.assert_close(everything.key_bias, weight.log() * inputs[3])
    torch.testing.assert_close(attend(everything, query), attend(kept, query), rtol=1e-5, atol=1e-6)


def test_gating_dropped_patches_passes_what_letting_each_back_in_would_change():
    """The gradient into the scores is that of ``soft_votes . dL/dw``, ``w`` each key's weight (1 kept, the dropped
    weight dropped): dropped patches get the first-order effect of letting them in; budget training alone gets none."""
    patches, task, task_mask, patch_mask, positions = make_inputs(batch=2, num_patches=32)
    patch_mask[0, 28:] = False
    query = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    target = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))

    def task_grad(gate_dropped: bool, restated: bool = False) -> torch.Tensor:
        t = task.clone().requires_grad_(True)
        options = {"keep_tokens": 8, "budget_training": True, "gate_dropped_patches": gate_dropped}
        out = make_pruner(noise_scale=0.0, **options).train()(patches, t, task_mask, patch_mask, positions)
        if not restated:
            (attend(out, query) * target).sum().backward()
            return t.grad
        weight = out.key_bias.detach().exp().requires_grad_(True)  # [B, N] 1 kept, the dropped weight dropped
        loss = (attend(out._replace(key_bias=weight.log()), query) * target).sum()
        (loss_by_weight,) = torch.autograd.grad(loss, weight)
        soft_votes = (reference_scores(patches, t, task_mask, patch_mask).softmax(-1) * patch_mask[..., None]).sum(1)
        (soft_votes.float() * loss_by_weight).sum().backward()
        return t.grad

    torch.testing.assert_close(task_grad(True), task_grad(True, restated=True), rtol=1e-3, atol=1e-5)
    assert not torch.allclose(task_grad(True), task_grad(False), rtol=0.1), "the dropped patches' share is missing"


SAMPLED = {"keep_tokens": 8, "budget_training": True, "gate_dropped_patches": True, "gate_dropped_sample": 0.25}


def reference_soft_votes(patches, task, task_mask, patch_mask):
    """Each patch's share of the valid rows' softmax of the restated scores, ``[B, N]``."""
    return (reference_scores(patches, task, task_mask, patch_mask).softmax(-1) * patch_mask[..., None]).sum(1)


def test_sampled_gating_keeps_the_budgets_forward_on_a_shorter_prefix():
    inputs = make_inputs(batch=2, num_patches=32)
    inputs[3][0, 28:] = False  # sample 0: 20 dropped, 5 sampled; sample 1: 24 dropped, 6 sampled
    query = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    kept = make_pruner(noise_scale=0.0, keep_tokens=8, budget_training=True).train()(*inputs)
    sampled = make_pruner(noise_scale=0.0, **SAMPLED).train()(*inputs)
    assert sampled.tokens.shape[1] == 14 and sampled.mask.sum(1).tolist() == [13, 14]
    assert set(kept.kept_indices[0].tolist()) <= set(sampled.kept_indices[0][sampled.mask[0]].tolist())
    assert (sampled.kept_indices[0][sampled.mask[0]] < 28).all()  # never a patch of the absent camera
    torch.testing.assert_close(attend(sampled, query), attend(kept, query), rtol=1e-5, atol=1e-6)


def test_sampled_gating_gradient_is_its_restatement():
    """The gradient into the task is ``sum_j c_j v_j dL/da_j``: ``a_j`` each included key's weight (1 kept, the
    dropped weight sampled), ``c_j`` 1 for a kept patch and the inverse inclusion probability for a sampled one."""
    patches, task, task_mask, patch_mask, positions = make_inputs(batch=2, num_patches=32)
    patch_mask[0, 28:] = False
    query = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    target = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    inclusion = torch.tensor([5 / 20, 6 / 24])

    def task_grad(restated: bool) -> torch.Tensor:
        t = task.clone().requires_grad_(True)
        torch.manual_seed(7)  # the same sample of dropped patches in both
        out = make_pruner(noise_scale=0.0, **SAMPLED).train()(patches, t, task_mask, patch_mask, positions)
        if not restated:
            (attend(out, query) * target).sum().backward()
            return t.grad
        weight = out.key_bias.detach().exp().requires_grad_(True)  # [B, K + M]
        loss = (attend(out._replace(key_bias=weight.log()), query) * target).sum()
        (loss_by_weight,) = torch.autograd.grad(loss, weight)
        scale = torch.where(weight.detach() > 0.5, 1.0, 1.0 / inclusion[:, None]) * out.mask
        soft_votes = reference_soft_votes(patches, t, task_mask, patch_mask).gather(1, out.kept_indices)
        (soft_votes.float() * scale * loss_by_weight).sum().backward()
        return t.grad

    torch.testing.assert_close(task_grad(False), task_grad(True), rtol=1e-3, atol=1e-5)


def test_sampled_gating_averages_to_gating_every_dropped_patch():
    """Over every sample of 3 of the 6 dropped patches, the mean gradient is the one of gating all of them."""
    patches, task, task_mask, patch_mask, positions = make_inputs(batch=1, num_patches=8, task_len=4, dim=16)
    query = torch.randn(1, 16, generator=torch.Generator().manual_seed(2))
    target = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
    gated = {"keep_tokens": 2, "budget_training": True, "gate_dropped_patches": True}
    t = task.clone().requires_grad_(True)
    everything = make_pruner(noise_scale=0.0, **gated).train()(patches, t, task_mask, patch_mask, positions)
    (attend(everything, query) * target).sum().backward()
    keep = everything.key_bias.detach() > -1.0  # [1, 8]: the budget's two patches
    dropped = torch.nonzero(~keep[0]).flatten().tolist()
    grads = []
    for subset in itertools.combinations(dropped, 3):
        draw = torch.full((1, 8), 0.5).index_fill_(1, torch.tensor(subset), 0.0)
        sampled, inclusion = token_pruner.sample_dropped(keep, patch_mask, 0.34, draw)  # ceil(0.34 * 6) = 3
        assert sampled[0].nonzero().flatten().tolist() == list(subset) and inclusion.tolist() == [0.5]
        s = task.clone().requires_grad_(True)
        soft_votes = reference_soft_votes(patches, s, task_mask, patch_mask).float()
        out = token_pruner.gate_sampled_patches(patches, keep, sampled, inclusion, soft_votes, positions, width=5)
        (attend(out, query) * target).sum().backward()
        grads.append(s.grad)
    assert len(grads) == 20
    torch.testing.assert_close(torch.stack(grads).mean(0), t.grad, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(grads[0], t.grad, rtol=0.05), "one sample alone should differ from the mean"


def test_sampled_gating_leaves_the_eval_selection_as_the_budgets():
    inputs = make_inputs(batch=2, num_patches=32)
    budget = run(make_pruner(keep_tokens=8, budget_training=True, gate_dropped_patches=True), inputs, train=False)
    sampled = run(make_pruner(**SAMPLED), inputs, train=False)
    for name in ("tokens", "mask", "positions", "kept_indices"):
        assert torch.equal(getattr(sampled, name), getattr(budget, name)), name


def test_sampled_gating_needs_gated_dropped_patches():
    with pytest.raises(ValueError, match="needs token_prune_gate_dropped_patches True"):
        pi0_config.tiny_config(
            token_pruning_enabled=True,
            token_prune_budget_training=True,
            token_prune_keep_ratio=0.25,
            token_prune_gate_dropped_sample=0.25,
        )
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        pi0_config.tiny_config(token_prune_gate_dropped_sample=0.0)


def test_gating_dropped_patches_needs_budget_training():
    with pytest.raises(ValueError, match="needs token_prune_budget_training"):
        pi0_config.tiny_config(token_pruning_enabled=True, token_prune_gate_dropped_patches=True)


def test_budget_training_needs_a_budget():
    with pytest.raises(ValueError, match="token_prune_budget_training trains on the inference budget"):
        make_pruner(budget_training=True)
    pruner = make_pruner(budget_training=True, keep_tokens=4)
    pruner.keep_tokens = None  # a budget removed at run time
    with pytest.raises(ValueError, match="budget_training needs a budget"):
        run(pruner, make_inputs(), train=True)


# --- eval mode ---------------------------------------------------------------------------------------------------


def test_eval_keeps_union_of_votes_in_original_order():
    inputs = make_inputs(batch=1, num_patches=64)
    patches, _, _, _, positions = inputs
    out = run(make_pruner(), inputs, train=False)
    union = torch.unique(reference_scores(*inputs[:4]).argmax(-1)[0])
    assert 0 < len(union) < 64, "eval must shorten the sequence"
    assert torch.equal(out.kept_indices[0], union)
    torch.testing.assert_close(out.tokens[0], patches[0, union])
    assert torch.equal(out.positions[0], positions[0, union])
    assert out.mask.all()


def test_eval_batch_pads_to_largest_kept_count():
    patches, task, task_mask, patch_mask, positions = make_inputs(batch=2, num_patches=48)
    task[1] = task[1, :1]  # identical task tokens collapse sample 1 to a single patch
    out = run(make_pruner(), (patches, task, task_mask, patch_mask, positions), train=False)
    counts = out.mask.sum(1)
    assert counts[1] == 1 and counts[0] > 1
    assert out.tokens.shape == (2, int(counts[0]), patches.shape[-1])
    assert torch.equal(out.mask[1], torch.arange(out.mask.shape[1]) < 1)
    assert (out.tokens[1, 1:] == 0).all()
    for b in range(2):
        kept = out.kept_indices[b, : counts[b]]
        assert (kept.diff() > 0).all()
        torch.testing.assert_close(out.tokens[b, : counts[b]], patches[b, kept])
        assert torch.equal(out.positions[b, : counts[b]], positions[b, kept])


@pytest.mark.parametrize("train", [True, False])
def test_absent_camera_patches_are_never_selected(train):
    patches, task, task_mask, patch_mask, positions = make_inputs(batch=2, num_patches=64)
    patch_mask[0, 32:] = False  # second camera absent in sample 0
    patches[0, 32:] = task[0].mean(0) + 0.1 * torch.randn(32, patches.shape[-1])  # and made attractive to the queries
    torch.manual_seed(0)
    out = run(make_pruner(noise_scale=1.0), (patches, task, task_mask, patch_mask, positions), train=train)
    picked = out.kept_indices[0][out.mask[0]]
    assert picked.numel() > 0 and (picked < 32).all()
    if train:
        assert (out.kept_indices[0] < 32).all(), "invalid rows must still point at valid patches"
        assert torch.equal(out.mask, patch_mask), "rows of absent patches are masked out"


@pytest.mark.parametrize("train", [True, False])
def test_padded_task_tokens_are_ignored(train):
    patches, task, task_mask, patch_mask, positions = make_inputs()
    task_mask[:, 5:] = False
    changed = task.clone()
    changed[:, 5:] = 100 * torch.randn_like(changed[:, 5:])
    outputs = []
    for task_tokens in (task, changed):
        pruner = make_pruner(noise_scale=0.0)
        pruner.collect_stats = True
        out = run(pruner, (patches, task_tokens, task_mask, patch_mask, positions), train=train)
        outputs.append((out, pruner.last_stats))
    (out_a, stats_a), (out_b, stats_b) = outputs
    assert torch.equal(out_a.kept_indices, out_b.kept_indices)
    torch.testing.assert_close(out_a.tokens, out_b.tokens)
    assert stats_a == pytest.approx(stats_b, nan_ok=True)
    assert stats_a["task_valid_len_mean"] == 5.0


@pytest.mark.parametrize("train", [True, False])
def test_degenerate_samples_give_no_nan(train):
    patches, task, task_mask, patch_mask, positions = make_inputs(batch=3)
    task_mask[0] = False  # no task token at all
    patch_mask[1] = False  # every camera absent
    patches.requires_grad_(True)
    pruner = make_pruner(noise_scale=1.0)
    pruner.collect_stats = True
    torch.manual_seed(0)
    out = run(pruner, (patches, task, task_mask, patch_mask, positions), train=train)
    assert torch.isfinite(out.tokens).all()
    assert not out.mask[1].any()
    assert out.mask[0].sum() >= 1
    out.tokens.sum().backward()
    assert torch.isfinite(patches.grad).all()
    assert pruner.last_stats["kept_tokens_overall_min"] == 0.0
    # Without any valid task token the (padding) task embeddings still must not matter.
    task[0] = torch.randn_like(task[0])
    torch.manual_seed(0)
    again = run(pruner, (patches.detach(), task, task_mask, patch_mask, positions), train=train)
    torch.testing.assert_close(again.tokens[0], out.tokens[0])


# --- fixed budgets -----------------------------------------------------------------------------------------------


def expected_budget_selection(inputs, budget):
    """Top-`budget` valid patches by (votes desc, best score over valid rows desc, index asc), original order."""
    _, _, _, patch_mask, _ = inputs
    scores = reference_scores(*inputs[:4])[0]
    valid = patch_mask[0]
    votes = torch.bincount(scores.argmax(-1)[valid], minlength=scores.shape[0])
    best = scores[valid].amax(0)
    ranked = sorted(torch.nonzero(valid)[:, 0].tolist(), key=lambda j: (-votes[j].item(), -best[j].item(), j))
    return sorted(ranked[:budget]), votes


@pytest.mark.parametrize("keep_tokens", [3, 20, 40])
def test_keep_tokens_ranks_by_votes_then_best_score(keep_tokens):
    inputs = make_inputs(batch=1, num_patches=48)
    inputs[3][0, 40:] = False  # 40 valid patches
    out = run(make_pruner(keep_tokens=keep_tokens), inputs, train=False)
    expected, votes = expected_budget_selection(inputs, keep_tokens)
    assert out.kept_indices[0].tolist() == expected
    assert out.mask.sum() == min(keep_tokens, 40)
    assert len(set(votes[expected].tolist())) > 1 or keep_tokens == 40, "the case must exercise ties on votes"


@pytest.mark.parametrize(("ratio", "expected_count"), [(0.14, 7), (0.25, 13), (0.02, 1), (1.0, 50)])
def test_keep_ratio_keeps_ceil_of_valid(ratio, expected_count):
    inputs = make_inputs(batch=1, num_patches=64)
    inputs[3][0, 50:] = False  # 50 valid patches; 0.14 * 50 = 7.000000000000001 in floats must still give 7
    out = run(make_pruner(keep_ratio=ratio), inputs, train=False)
    assert out.mask.sum() == expected_count
    assert out.kept_indices[0].tolist() == expected_budget_selection(inputs, expected_count)[0]


def test_budget_per_sample_and_keep_tokens_wins():
    inputs = make_inputs(batch=2, num_patches=32)
    inputs[3][1, 4:] = False  # sample 1 has only 4 valid patches
    out = run(make_pruner(keep_tokens=10, keep_ratio=0.5), inputs, train=False)
    assert out.mask.sum(1).tolist() == [10, 4]
    assert (out.kept_indices[1, :4] < 4).all()
    assert (out.tokens[1, 4:] == 0).all()


def test_settings_are_validated_and_settable():
    pruner = make_pruner()
    pruner.keep_tokens = 5
    pruner.keep_ratio = 0.5
    pruner.noise_scale = 0.25
    assert (pruner.keep_tokens, pruner.keep_ratio, pruner.noise_scale) == (5, 0.5, 0.25)
    for name, bad in [("noise_scale", -0.1), ("noise_scale", math.inf), ("keep_tokens", 0), ("keep_tokens", 2.5)]:
        with pytest.raises(ValueError, match=name):
            setattr(pruner, name, bad)
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="keep_ratio"):
            pruner.keep_ratio = bad


def test_wrong_input_shapes_are_named():
    patches, task, task_mask, patch_mask, positions = make_inputs()
    pruner = make_pruner()
    with pytest.raises(ValueError, match="patch_mask"):
        pruner(patches, task, task_mask, patch_mask[:, :-1], positions)
    with pytest.raises(ValueError, match="task_tokens"):
        pruner(patches, task[..., :-1], task_mask, patch_mask, positions)
    with pytest.raises(ValueError, match="task_mask"):
        pruner(patches, task, task_mask.int(), patch_mask, positions)


# --- telemetry ---------------------------------------------------------------------------------------------------


def test_telemetry_is_off_by_default_and_computes_nothing(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("telemetry computed although collect_stats is False")

    monkeypatch.setattr(token_pruner, "_telemetry", fail)
    pruner = make_pruner()
    for train in (True, False):
        run(pruner, make_inputs(), train=train)
        assert pruner.last_stats is None


def test_telemetry_keys_and_values():
    inputs = make_inputs(batch=2, num_patches=32)
    inputs[3][1, 16:] = False
    inputs[2][0, 6:] = False
    pruner = make_pruner(noise_scale=0.3)
    pruner.collect_stats = True
    out = run(pruner, inputs, train=False)
    stats = pruner.last_stats
    assert set(stats) == STAT_KEYS and all(isinstance(v, float) for v in stats.values())
    counts = out.mask.sum(1).float()
    assert stats["kept_tokens_overall_mean"] == pytest.approx(counts.mean().item())
    assert (stats["kept_tokens_overall_min"], stats["kept_tokens_overall_max"]) == (
        counts.min().item(),
        counts.max().item(),
    )
    assert stats["kept_ratio_overall_mean"] == pytest.approx((counts / torch.tensor([32.0, 16.0])).mean().item())
    assert stats["task_valid_len_mean"] == 7.0
    assert stats["argmax_union_mean"] == stats["kept_tokens_overall_mean"]
    scores = reference_scores(*inputs[:4])
    shares = [
        torch.bincount(scores[b].argmax(-1)[inputs[3][b]]).max().item() / inputs[3][b].sum().item() for b in range(2)
    ]
    assert stats["argmax_top1_share_mean"] == pytest.approx(sum(shares) / 2)
    finite = torch.where(inputs[3][:, :, None] & inputs[3][:, None, :], scores.abs(), 0.0)
    assert stats["score_abs_max_det_mean"] == pytest.approx(finite.amax((1, 2)).mean().item(), rel=1e-5)
    top2 = scores.topk(2, -1).values
    gaps = [(top2[b, :, 0] - top2[b, :, 1])[inputs[3][b]].mean().item() for b in range(2)]
    assert stats["score_top1_gap_det_mean"] == pytest.approx(sum(gaps) / 2, rel=1e-5)
    # The last RMS norm rescales each query row, so cosine similarities cannot change through it.
    assert stats["query_cosine_before_norm_mean"] == pytest.approx(stats["query_cosine_after_norm_mean"], abs=1e-5)

    pruner.train()
    pruner(*inputs)
    assert set(pruner.last_stats) == STAT_KEYS | NOISY_STAT_KEYS
    assert pruner.last_stats["kept_tokens_overall_mean"] == stats["kept_tokens_overall_mean"], (
        "train reports the deterministic union"
    )


# --- collapse ----------------------------------------------------------------------------------------------------


def eval_stats(patches, task, center_patches=False):
    batch, num_patches, _ = patches.shape
    pruner = make_pruner(center_patches=center_patches).eval()
    pruner.collect_stats = True
    pruner(
        patches,
        task,
        torch.ones(task.shape[:2], dtype=torch.bool),
        torch.ones(batch, num_patches, dtype=torch.bool),
        torch.arange(num_patches).expand(batch, num_patches),
    )
    return pruner.last_stats


def assert_collapsed(stats):
    assert stats["argmax_union_mean"] <= 3
    assert stats["argmax_top1_share_mean"] >= 0.5
    assert stats["queries_std_mean"] < 0.05 * stats["patches_std_mean"]
    assert stats["query_cosine_after_norm_mean"] > 0.99


def test_collapse_near_identical_task_tokens_vs_diverse():
    """Near-identical task tokens -> every patch gets the same query -> every row votes for the same patch."""
    gen = torch.Generator().manual_seed(0)
    batch, num_patches, task_len, dim = 2, 64, 16, 64
    patches = torch.randn(batch, num_patches, dim, generator=gen)
    same = torch.randn(batch, 1, dim, generator=gen) + 1e-3 * torch.randn(batch, task_len, dim, generator=gen)
    diverse = torch.randn(batch, task_len, dim, generator=gen)

    collapsed, healthy = eval_stats(patches, same), eval_stats(patches, diverse)
    assert_collapsed(collapsed)
    assert collapsed["task_std_mean"] < 0.01
    assert healthy["argmax_union_mean"] >= 5 * collapsed["argmax_union_mean"]
    assert healthy["argmax_top1_share_mean"] < 0.3
    assert healthy["queries_std_mean"] > 0.3 * healthy["patches_std_mean"]
    assert healthy["query_cosine_after_norm_mean"] < 0.8


def test_collapse_with_diverse_task_tokens_the_patches_cannot_tell_apart():
    """A healthy task_std, yet constant queries, because the attention is flat.

    Task tokens share one component the patches see and differ only in directions orthogonal to every patch, so each
    patch attends uniformly and its query is the mean task token, the same for all patches.
    """
    gen = torch.Generator().manual_seed(0)
    batch, num_patches, task_len, dim = 2, 64, 32, 64
    patches = torch.randn(batch, num_patches, dim, generator=gen)
    patches[..., dim // 2 :] = 0  # patches live in the first half of the channels
    shared = torch.randn(batch, 1, dim, generator=gen)
    shared[..., dim // 2 :] = 0
    private = torch.randn(batch, task_len, dim, generator=gen)
    private[..., : dim // 2] = 0  # task-token differences live in the other half
    task = shared + 0.5 * private

    stats = eval_stats(patches, task)
    assert_collapsed(stats)
    assert stats["task_std_mean"] > 0.3, "the task tokens themselves are diverse"


def anisotropic_inputs(seed=0):
    """Patches = one large shared vector + small distinct parts (like trained patch embeddings); diverse task."""
    gen = torch.Generator().manual_seed(seed)
    batch, num_patches, task_len, dim = 2, 64, 16, 64
    shared = 4.0 * torch.randn(batch, 1, dim, generator=gen)
    patches = shared + 0.3 * torch.randn(batch, num_patches, dim, generator=gen)
    task = torch.randn(batch, task_len, dim, generator=gen)
    return patches, task


def test_collapse_from_anisotropic_patches_and_how_centering_prevents_it():
    """A shared patch component makes every patch attend alike; centring the patches for scoring removes it."""
    patches, task = anisotropic_inputs()
    spec = eval_stats(patches, task)
    centred = eval_stats(patches, task, center_patches=True)
    assert spec["argmax_union_mean"] <= 3 and spec["query_cosine_after_norm_mean"] > 0.95
    assert centred["argmax_union_mean"] >= 10 * spec["argmax_union_mean"]
    assert centred["query_cosine_after_norm_mean"] < 0.8 and centred["argmax_top1_share_mean"] < 0.3


def test_centering_ignores_absent_cameras_and_keeps_original_tokens():
    patches, task = anisotropic_inputs()
    batch, num_patches, dim = patches.shape
    patch_mask = torch.ones(batch, num_patches, dtype=torch.bool)
    patch_mask[:, 32:] = False
    pruner = make_pruner(center_patches=True).eval()
    inputs = (
        patches,
        task,
        torch.ones(task.shape[:2], dtype=torch.bool),
        patch_mask,
        torch.arange(num_patches).expand(batch, -1),
    )
    out = pruner(*inputs)
    kept = out.kept_indices[out.mask]
    assert (kept < 32).all()
    torch.testing.assert_close(
        out.tokens[out.mask], patches.gather(1, out.kept_indices[..., None].expand(-1, -1, dim))[out.mask]
    )
    # Changing the absent camera's patches changes neither the centring nor the selection.
    scrambled = patches.clone()
    scrambled[:, 32:] = 100 * torch.randn_like(scrambled[:, 32:])
    again = pruner(scrambled, *inputs[1:])
    assert torch.equal(again.kept_indices[again.mask], kept)


# --- realistic size ---------------------------------------------------------------------------------------------


def test_realistic_size_smoke():
    batch, num_patches, task_len, dim = 2, 768, 50, 2048
    inputs = make_inputs(batch=batch, num_patches=num_patches, task_len=task_len, dim=dim)
    inputs[2][:, 40:] = False
    inputs[3][1, 512:] = False  # third camera absent in sample 1
    patches = inputs[0].requires_grad_(True)
    pruner = make_pruner(noise_scale=0.5)
    pruner.collect_stats = True
    out = run(pruner, (patches, *inputs[1:]), train=True)
    assert out.tokens.shape == (batch, num_patches, dim)
    out.tokens.square().mean().backward()
    assert torch.isfinite(patches.grad).all()
    assert set(pruner.last_stats) == STAT_KEYS | NOISY_STAT_KEYS
    with torch.inference_mode():
        out = run(pruner, (patches.detach(), *inputs[1:]), train=False)
    assert out.tokens.shape[1] < num_patches
    assert (out.kept_indices[1][out.mask[1]] < 512).all()


# --- settings ----------------------------------------------------------------------------------------------------


def test_the_model_config_is_the_one_source_of_the_pruners_settings():
    fields = [f for f in dataclasses.fields(pi0_config.Pi0Config) if f.name.startswith("token_prun")]
    assert len(fields) <= 10, "research variants compose the pruner in research/, they add no field here"
    config = pi0_config.tiny_config(token_pruning_enabled=True)
    pruner = ImageTokenPruner(config)
    settings = {
        "noise_scale": config.token_prune_noise_scale,
        "keep_tokens": config.token_prune_keep_tokens,
        "keep_ratio": config.token_prune_keep_ratio,
        "kept_multiple": config.token_prune_kept_multiple,
        "center_patches": config.token_prune_center_patches,
        "dedup_training": config.token_prune_dedup_training,
        "budget_training": config.token_prune_budget_training,
        "gate_dropped_patches": config.token_prune_gate_dropped_patches,
        "gate_dropped_sample": config.token_prune_gate_dropped_sample,
    }
    assert {name: getattr(pruner, name) for name in settings} == settings
    assert not list(pruner.parameters())

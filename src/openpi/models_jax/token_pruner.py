"""LightVLA visual-token pruning in JAX: the same selection as ``models_pytorch.token_pruner``, with static shapes.

Training keeps all N rows (row i is the patch it votes for, straight-through gradient), so its shapes never change;
budget training keeps the budget's K patches (a static count).
Inference keeps a data-dependent number of patches; under ``jit`` a kept set is therefore gathered into a static
number of slots with a validity mask: a fixed budget of K patches uses ``min(K, N)`` slots, a ratio ``ceil(r * N)``,
and the implicit union (a count known only after scoring) the batch's largest count rounded up to a bucket
(``kept_slots``), so that the compiled prefix really shrinks while recompilation stays bounded by the number of
buckets. See docs/model.md ("The JAX model").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

_RMS_EPS = 1e-6
_NEVER = float(jnp.finfo(jnp.float32).min)
_CEIL_TOLERANCE = 1e-9
# With gate_dropped_patches, the attention weight a dropped patch keeps in training (models_pytorch.token_pruner's).
DROPPED_KEY_WEIGHT = 1e-12
# Kept-count bucket for the implicit (union) selection when the config sets no token_prune_kept_multiple.
DEFAULT_KEPT_MULTIPLE = 16


class Scoring(NamedTuple):
    """Intermediate arrays of the scoring step (float32)."""

    patches_n: jax.Array  # [B, N, D] rms(patches)
    task_n: jax.Array  # [B, T, D] rms(task)
    queries_raw: jax.Array  # [B, N, D] attention output before the last RMS norm
    queries: jax.Array  # [B, N, D]
    scores: jax.Array  # [B, N, N], invalid columns set to _NEVER


class PrunedPatches(NamedTuple):
    tokens: jax.Array  # [B, K, D]
    mask: jax.Array  # [B, K] bool
    positions: jax.Array  # [B, K] int32, positions in the unpruned prefix
    kept_indices: jax.Array  # [B, K] int32, into the N pooled patches


def _rms_norm(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + _RMS_EPS)


def _center(patches: jax.Array, patch_mask: jax.Array) -> jax.Array:
    weights = patch_mask[..., None].astype(jnp.float32)
    total = (patches.astype(jnp.float32) * weights).sum(1, keepdims=True)
    return patches.astype(jnp.float32) - total / jnp.maximum(weights.sum(1, keepdims=True), 1.0)


def score(
    patches: jax.Array, task: jax.Array, task_mask: jax.Array, patch_mask: jax.Array, center_patches: bool
) -> Scoring:
    """Patch-to-patch scores ``Q P^T / sqrt(D)``: each patch's query is its attention over the task tokens; a sample
    without any valid task token gets zero queries."""
    patches_n = _rms_norm(_center(patches, patch_mask) if center_patches else patches)
    task_n = _rms_norm(task)
    dim = patches.shape[-1]
    has_task = task_mask.any(axis=1)
    attend = task_mask | ~has_task[:, None]
    logits = jnp.einsum("bnd,btd->bnt", patches_n, task_n) / math.sqrt(dim)
    attention = jax.nn.softmax(jnp.where(attend[:, None, :], logits, -jnp.inf), axis=-1)
    queries_raw = jnp.einsum("bnt,btd->bnd", attention, task_n) * has_task[:, None, None]
    queries = _rms_norm(queries_raw)
    scores = jnp.einsum("bnd,bmd->bnm", queries, patches_n) / math.sqrt(dim)
    return Scoring(patches_n, task_n, queries_raw, queries, jnp.where(patch_mask[:, None, :], scores, _NEVER))


def count_votes(choice: jax.Array, row_valid: jax.Array) -> jax.Array:
    """``[B, N]`` number of valid rows whose choice is each patch."""
    one_hot = jax.nn.one_hot(choice, choice.shape[1], dtype=jnp.int32) * row_valid[..., None]
    return one_hot.sum(axis=1)


def select_train(
    patches: jax.Array,
    scores: jax.Array,
    patch_mask: jax.Array,
    positions: jax.Array,
    uniform: jax.Array,
    noise_scale: float | jax.Array,
) -> tuple[PrunedPatches, jax.Array]:
    """Row i becomes the patch of its noisy argmax (``uniform [B, N, N]`` in [0, 1) times ``noise_scale``), with the
    straight-through gradient of the softmax of the clean scores."""
    choice = (scores + uniform * noise_scale).argmax(axis=-1)  # [B, N]
    soft = jax.nn.softmax(scores, axis=-1)
    hard = jax.nn.one_hot(choice, scores.shape[-1], dtype=soft.dtype)
    weights = hard + soft - jax.lax.stop_gradient(soft)
    tokens = jnp.einsum("bnm,bmd->bnd", weights.astype(patches.dtype), patches)
    row_valid = patch_mask & jnp.take_along_axis(patch_mask, choice, axis=1)
    kept = PrunedPatches(tokens, row_valid, jnp.take_along_axis(positions, choice, axis=1), choice.astype(jnp.int32))
    return kept, choice


def _rank_patches(votes: jax.Array, best_score: jax.Array, patch_mask: jax.Array) -> jax.Array:
    """Rank of each patch: votes desc, then best score desc, then index asc; invalid patches last."""
    votes = jnp.where(patch_mask, votes, -1)
    index = jnp.broadcast_to(jnp.arange(votes.shape[1]), votes.shape)
    order = jnp.lexsort((index, -best_score, -votes), axis=1)  # the last key sorts first
    return jnp.argsort(order, axis=1)


def budget(patch_mask: jax.Array, keep_tokens: int | None, keep_ratio: float | None) -> jax.Array | None:
    """``[B]`` patches to keep under a fixed budget, or None for the implicit (union) selection."""
    valid = patch_mask.sum(axis=1)
    if keep_tokens is not None:
        return jnp.minimum(valid, keep_tokens)
    if keep_ratio is not None:
        wanted = jnp.ceil(valid * keep_ratio - _CEIL_TOLERANCE).astype(jnp.int32)
        return jnp.minimum(jnp.maximum(wanted, 1), valid)
    return None


def keep_mask(
    scores: jax.Array, patch_mask: jax.Array, keep_tokens: int | None, keep_ratio: float | None
) -> tuple[jax.Array, jax.Array]:
    """Eval selection: ``[B, N]`` bool kept patches and ``[B, N]`` votes (the union of the argmaxes, or a budget's
    best-ranked patches)."""
    votes = count_votes(scores.argmax(axis=-1), patch_mask)
    limit = budget(patch_mask, keep_tokens, keep_ratio)
    if limit is None:
        return votes > 0, votes
    return _best_ranked(scores, votes, patch_mask, limit), votes


def soft_votes(scores: jax.Array, patch_mask: jax.Array) -> jax.Array:
    """``[B, N]``: each patch's share of the valid rows' softmax, ``sum_i softmax(S)[i, j]``."""
    return (jax.nn.softmax(scores, axis=-1) * patch_mask[..., None]).sum(axis=1)


def _best_ranked(scores: jax.Array, votes: jax.Array, patch_mask: jax.Array, limit: jax.Array) -> jax.Array:
    """``[B, N]`` bool: the ``limit [B]`` best-ranked patches (votes, then best score over valid rows)."""
    best_score = jnp.where(patch_mask[:, :, None], scores, _NEVER).max(axis=1)
    return _rank_patches(votes, best_score, patch_mask) < limit[:, None]


class BudgetSelection(NamedTuple):
    kept: PrunedPatches  # the budget's patches in its static slots
    gate: jax.Array  # [B, K] the kept patches' straight-through soft votes: zero in value
    choice: jax.Array  # [B, N] each row's noisy vote
    kept_counts: jax.Array  # [B]


def select_train_budget(
    patches: jax.Array,
    scores: jax.Array,
    patch_mask: jax.Array,
    positions: jax.Array,
    uniform: jax.Array,
    noise_scale: float | jax.Array,
    keep_tokens: int | None,
    keep_ratio: float | None,
    gate_dropped_patches: bool,
) -> BudgetSelection:
    """Budget training (``token_prune_budget_training``): the patches the serving budget keeps, ranked from the noisy
    votes and scores, and each kept patch's soft votes ``v_j = sum_i softmax(S)[i, j]`` over valid rows (of the clean
    scores) as a gate ``v - stop_gradient(v)`` to add to every attention logit into its key.
    ``gate_dropped_patches``: all N patches instead, the dropped ones at the attention weight ``w =
    DROPPED_KEY_WEIGHT`` (1 kept) through the gate ``log(w + v - stop_gradient(v))``: the budget's forward, and a
    gradient that reaches the dropped patches too."""
    limit = budget(patch_mask, keep_tokens, keep_ratio)
    if limit is None:
        raise ValueError("token_prune_budget_training needs a budget: set keep_tokens or keep_ratio")
    noisy = scores + uniform * noise_scale
    choice = noisy.argmax(axis=-1)  # [B, N]
    keep = _best_ranked(noisy, count_votes(choice, patch_mask), patch_mask, limit)
    votes = soft_votes(scores, patch_mask)  # [B, N]
    if gate_dropped_patches:
        weight = jnp.where(keep, 1.0, DROPPED_KEY_WEIGHT)  # [B, N]
        gate = (jnp.log(weight) + (votes - jax.lax.stop_gradient(votes)) / weight) * patch_mask
        indices = jnp.broadcast_to(jnp.arange(patches.shape[1], dtype=jnp.int32), patch_mask.shape)
        return BudgetSelection(PrunedPatches(patches, patch_mask, positions, indices), gate, choice, keep.sum(axis=1))
    slots = kept_slots(patches.shape[1], keep_tokens, keep_ratio, 0, None)
    kept = gather_kept(patches, keep, positions, slots)
    gate = jnp.take_along_axis(votes - jax.lax.stop_gradient(votes), kept.kept_indices, axis=1) * kept.mask
    return BudgetSelection(kept, gate, choice, keep.sum(axis=1))


def kept_slots(
    num_patches: int, keep_tokens: int | None, keep_ratio: float | None, largest: int, multiple: int | None
) -> int:
    """The static number of kept slots: the budget's maximum, or the batch's ``largest`` union rounded up to
    ``multiple`` (default :data:`DEFAULT_KEPT_MULTIPLE`)."""
    if keep_tokens is not None:
        return min(keep_tokens, num_patches)
    if keep_ratio is not None:
        return min(max(math.ceil(num_patches * keep_ratio - _CEIL_TOLERANCE), 1), num_patches)
    multiple = multiple or DEFAULT_KEPT_MULTIPLE
    return min(max(-(-largest // multiple) * multiple, multiple), num_patches)


def gather_kept(patches: jax.Array, keep: jax.Array, positions: jax.Array, slots: int) -> PrunedPatches:
    """The kept patches in their original order in ``slots`` static slots (padding rows zero and masked)."""
    kept_indices = jnp.argsort(~keep, axis=1, stable=True)[:, :slots].astype(jnp.int32)  # kept first, in order
    mask = jnp.arange(slots)[None, :] < keep.sum(axis=1)[:, None]
    tokens = jnp.take_along_axis(patches, kept_indices[..., None], axis=1) * mask[..., None].astype(patches.dtype)
    return PrunedPatches(tokens, mask, jnp.take_along_axis(positions, kept_indices, axis=1), kept_indices)


def _masked_token_std(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask[..., None].astype(jnp.float32)
    count = jnp.maximum(m.sum(1), 1.0)
    mean = (x * m).sum(1) / count
    var = (jnp.square(x - mean[:, None]) * m).sum(1) / count
    return jnp.where(mask.any(axis=1), jnp.sqrt(var).mean(-1), jnp.nan)


def _mean_pairwise_cosine(x: jax.Array, mask: jax.Array) -> jax.Array:
    unit = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12) * mask[..., None]
    n = mask.sum(1).astype(jnp.float32)
    pair_sum = jnp.square(unit.sum(1)).sum(-1) - jnp.square(unit).sum((1, 2))
    return jnp.where(n >= 2, pair_sum / jnp.maximum(n * (n - 1), 1.0), jnp.nan)


def _argmax_stats(votes: jax.Array, n_rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    return (votes > 0).sum(1).astype(jnp.float32), votes.max(1).astype(jnp.float32) / jnp.maximum(n_rows, 1.0)


def telemetry(
    scoring: Scoring,
    task_mask: jax.Array,
    patch_mask: jax.Array,
    kept_counts: jax.Array | None,
    noisy_choice: jax.Array | None,
) -> dict[str, jax.Array]:
    """Batch-level diagnostics under the ``prune/*`` names (without the prefix), as the PyTorch pruner logs them."""
    scores = jax.lax.stop_gradient(scoring.scores)
    valid = patch_mask.sum(1).astype(jnp.float32)
    det_union, det_share = _argmax_stats(count_votes(scores.argmax(-1), patch_mask), valid)
    kept = det_union if kept_counts is None else kept_counts.astype(jnp.float32)
    entry_mask = patch_mask[:, :, None] & patch_mask[:, None, :]
    top2 = jax.lax.top_k(scores, min(2, scores.shape[-1]))[0]
    gap_rows = patch_mask & (valid[:, None] >= 2)
    gap = ((top2[..., 0] - top2[..., -1]) * gap_rows).sum(1) / gap_rows.sum(1)
    per_sample = {
        "kept_tokens_overall": kept,
        "kept_ratio_overall": kept / jnp.maximum(valid, 1.0),
        "task_valid_len": task_mask.sum(1).astype(jnp.float32),
        "argmax_union": det_union,
        "argmax_top1_share": det_share,
        "patches_std": _masked_token_std(scoring.patches_n, patch_mask),
        "task_std": _masked_token_std(scoring.task_n, task_mask),
        "queries_std": _masked_token_std(scoring.queries, patch_mask),
        "query_cosine_before_norm": _mean_pairwise_cosine(scoring.queries_raw, patch_mask),
        "query_cosine_after_norm": _mean_pairwise_cosine(scoring.queries, patch_mask),
        "score_abs_max_det": jnp.where(entry_mask, jnp.abs(scores), 0.0).max((1, 2)),
        "score_top1_gap_det": gap,
    }
    stats = {f"{name}_mean": jnp.nanmean(value) for name, value in per_sample.items()}
    if noisy_choice is not None:
        noisy_union, noisy_share = _argmax_stats(count_votes(noisy_choice, patch_mask), valid)
        stats |= {
            "kept_tokens_overall_mean_noisy": noisy_union.mean(),
            "argmax_union_mean_noisy": noisy_union.mean(),
            "argmax_top1_share_mean_noisy": noisy_share.mean(),
        }
    return stats | {"kept_tokens_overall_min": kept.min(), "kept_tokens_overall_max": kept.max()}

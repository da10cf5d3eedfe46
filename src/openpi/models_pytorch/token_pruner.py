"""LightVLA visual-token pruning: a parameter-free (optionally one learned map), task-conditioned selector of image
patches.

Every patch asks the task (language + discrete state) what it is looking for (a cross-attention "query"), then votes
for the patch that best matches that query. Training keeps the sequence length and passes gradients through a
straight-through estimator; evaluation keeps the union of the votes (or a fixed budget) and drops the rest.
See docs/lightvla_pruning.md for the algorithm, the telemetry and how to diagnose a collapse.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

_RMS_EPS = 1e-6
# Score of a patch that must never be selected. Finite (unlike -inf) so that a sample without any valid patch yields a
# uniform softmax instead of NaN; far below any real score (|S| <= sqrt(D) after the RMS norms).
_NEVER = torch.finfo(torch.float32).min
# Guards ceil(r * n) against float error, e.g. 0.1 * 30 = 3.0000000000000004 must keep 3, not 4.
_CEIL_TOLERANCE = 1e-9
# With gate_dropped_patches, the weight a dropped patch's key keeps in training: small enough that the forward is the
# pruned one (a logit bias of -27.6), large enough that its attention probability, and so its gradient, stays a normal
# float32 / bfloat16 number (the straight-through gate divides that gradient by it).
DROPPED_KEY_WEIGHT = 1e-12
# Training logs the telemetry as prune/<stat>.
METRIC_PREFIX = "prune/"


class Selection(NamedTuple):
    """The last eval selection: which pooled patches were kept and how many rows voted for each."""

    kept_indices: torch.Tensor  # [B, K] long, into the N pooled patches (camera-major)
    mask: torch.Tensor  # [B, K] bool, False for padding
    votes: torch.Tensor  # [B, N] long


class PrunedPatches(NamedTuple):
    """Output of :class:`ImageTokenPruner`.

    Attributes:
        tokens: ``[B, K, D]`` patch embeddings (train: K = N, row i is the patch row i voted for; eval: the kept
            patches in their original order, zero-padded).
        mask: ``[B, K]`` bool, False for padding and for rows that came from invalid patches.
        positions: ``[B, K]`` long, the unpruned-prefix positions of the selected patches.
        kept_indices: ``[B, K]`` long, index into the N input patches (arbitrary where ``mask`` is False).
        counts: ``[B, K]`` long, how many rows each token stands for (train with ``dedup_training``: the rows that
            voted for the same patch, merged into one; 0 for padding), or None when every token is one row.
        key_bias: ``[B, K]`` float to add to the attention logit of every query into each token's key, or None:
            ``log(counts)`` for merged rows; in ``budget_training`` the straight-through gate of the kept patches'
            soft votes (0 in value, so the forward is unchanged; its gradient says how much the loss wants more of
            each kept patch).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    kept_indices: torch.Tensor
    counts: torch.Tensor | None = None
    key_bias: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class _Scoring:
    """Intermediate tensors of the scoring step (float32)."""

    patches_n: torch.Tensor  # [B, N, D] rms(patches)
    task_n: torch.Tensor  # [B, T, D] rms(task)
    queries_raw: torch.Tensor  # [B, N, D] SDPA output before the last RMS norm
    queries: torch.Tensor  # [B, N, D] rms(queries_raw)
    scores: torch.Tensor  # [B, N, N] Q P^T / sqrt(D) (or cos / temperature), invalid columns set to _NEVER


def is_pruner_parameter(name: str) -> bool:
    """Whether a state-dict key is the pruner's own (its ``query_projection``): checkpoints trained without it lack
    it, and a model loading one as its base keeps the identity it starts from."""
    return name.endswith("token_pruner.query_projection")


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMS norm over the last axis, in float32."""
    x = x.float()
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + _RMS_EPS)


def _center(patches: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """Subtracts each sample's mean over its valid patches (float32)."""
    weights = patch_mask[..., None].float()
    mean = (patches.float() * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return patches.float() - mean


def _score(
    patches: torch.Tensor,
    task_tokens: torch.Tensor,
    task_mask: torch.Tensor,
    patch_mask: torch.Tensor,
    center_patches: bool,
    score_temperature: float | None = None,
    query_projection: torch.Tensor | None = None,
) -> _Scoring:
    """Computes the patch-to-patch scores; samples without any valid task token get zero queries (no NaN).

    ``score_temperature`` None: ``Q P^T / sqrt(D)`` (LightVLA; ``|S| <= sqrt(D)``); a number ``t``: the cosine
    ``Q P^T / D`` divided by ``t`` (``|S| <= 1 / t`` at any width). ``query_projection``: a ``[D, D]`` map applied to
    the queries before their last RMS norm (the bound holds either way)."""
    patches_n = _rms_norm(_center(patches, patch_mask) if center_patches else patches)
    task_n = _rms_norm(task_tokens)
    has_task = task_mask.any(dim=1)
    attend = task_mask | ~has_task[:, None]  # an all-False row would make SDPA return NaN
    queries_raw = F.scaled_dot_product_attention(patches_n, task_n, task_n, attn_mask=attend[:, None, :])
    queries_raw = queries_raw * has_task[:, None, None]
    projected = queries_raw if query_projection is None else queries_raw @ query_projection.float().T
    queries = _rms_norm(projected)
    width = patches.shape[-1]
    scale = math.sqrt(width) if score_temperature is None else width * score_temperature
    scores = (queries @ patches_n.transpose(1, 2)).float() / scale  # float32 under autocast
    scores = scores.masked_fill(~patch_mask[:, None, :], _NEVER)
    return _Scoring(patches_n, task_n, queries_raw, queries, scores)


def _count_votes(choice: torch.Tensor, row_valid: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` number of valid rows whose argmax is each patch."""
    votes = torch.zeros(choice.shape, dtype=torch.long, device=choice.device)
    return votes.scatter_add_(1, choice, row_valid.long())


def _soft_votes(scores: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: each patch's share of the valid rows' softmax, ``sum_i softmax(S)[i, j]``."""
    return (scores.softmax(dim=-1) * patch_mask[..., None]).sum(dim=1)


def _rank_patches(votes: torch.Tensor, best_score: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """Rank of each patch (0 = most important): votes desc, then best score desc, then index asc; invalid last.
    ``votes`` may be counts or soft votes (both >= 0)."""
    votes = votes.masked_fill(~patch_mask, -1)
    by_score = torch.sort(best_score, dim=1, descending=True, stable=True).indices
    by_votes = torch.sort(votes.gather(1, by_score), dim=1, descending=True, stable=True).indices
    order = by_score.gather(1, by_votes)
    ranks = torch.empty_like(order)
    arange = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, arange)


def _neighbourhood_ranks(ranks: torch.Tensor, selectable: torch.Tensor, side: int, radius: int) -> torch.Tensor:
    """Re-ranks ``[B, N]`` patch ranks (camera-major ``side x side`` grids) by the best rank of a selectable patch
    within ``radius`` of each (ties: its own rank); the unselectable patches last."""
    batch, num_patches = ranks.shape
    anchors = ranks.float().masked_fill(~selectable, num_patches)  # an unselectable patch anchors nothing
    grids = anchors.view(-1, 1, side, side)  # [B * cameras, 1, side, side]
    best = -F.max_pool2d(-grids, 2 * radius + 1, stride=1, padding=radius)  # min over each neighbourhood
    key = best.view(batch, num_patches).long() * num_patches + ranks  # [B, N]
    key = key.masked_fill(~selectable, num_patches * (num_patches + 1))
    order = key.argsort(dim=1, stable=True)
    arange = torch.arange(num_patches, device=ranks.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, arange)


def _masked_token_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` std over the valid tokens (population std), averaged over channels (NaN without valid tokens)."""
    m = mask[..., None].float()
    count = m.sum(dim=1).clamp(min=1.0)
    mean = (x * m).sum(dim=1) / count
    var = ((x - mean[:, None]).square() * m).sum(dim=1) / count
    return torch.where(mask.any(dim=1), var.sqrt().mean(dim=-1), math.nan)


def _mean_pairwise_cosine(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean cosine over distinct pairs of valid rows (NaN when fewer than two rows)."""
    unit = F.normalize(x, dim=-1) * mask[..., None]
    n = mask.sum(dim=1).float()
    pair_sum = unit.sum(dim=1).square().sum(dim=-1) - unit.square().sum(dim=(1, 2))
    return torch.where(n >= 2, pair_sum / (n * (n - 1)).clamp(min=1.0), math.nan)


def _argmax_stats(votes: torch.Tensor, n_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B]`` union size and top-1 vote share of an argmax selection."""
    return (votes > 0).sum(dim=1).float(), votes.amax(dim=1).float() / n_rows.clamp(min=1.0)


class ImageTokenPruner(nn.Module):
    """LightVLA pruner over the pooled patches of all cameras (parameter-free unless ``query_width`` is set).

    ``train()``: adds ``U(0, 1) * noise_scale`` to the scores, takes each row's argmax and returns
    ``W @ patches`` with ``W = onehot(argmax) + softmax(S) - stopgrad(softmax(S))`` (K = N; the forward value is the
    voted patch, the gradient flows through the noise-free ``softmax(S)``). ``eval()``: no noise; keeps the union of
    each valid row's argmax, in original order, padded to the batch's largest count.

    Fixed budgets (eval only): ``keep_tokens`` keeps exactly ``min(keep_tokens, valid patches)`` per sample,
    ``keep_ratio`` keeps ``ceil(keep_ratio * valid patches)``; ``keep_tokens`` wins when both are set. Patches are
    ranked by support (number of valid rows voting for them), ties broken by the patch's best score over valid rows
    (``max_i S[i, j]``), then by lower index.

    ``noisy_softmax``: the soft part of the straight-through weights is ``softmax`` of the *noisy* scores, as in
    LightVLA's released code; False (the default) uses the noise-free scores. The forward value is the same either
    way; only the gradient into the scores differs.

    ``dedup_training``: in train mode, return each voted patch once instead of once per voting row (K = the number
    of distinct votes U, padded to the batch's largest, bucketed like the eval count), as the mean of its rows, with
    ``counts``. The rows it merges are the same token at the same position, so a transformer that adds ``log(count)``
    to the attention logit of each such key computes exactly what it would on the N rows, on U tokens; the mean
    gives every row its share of the token's gradient, so the straight-through gradient is unchanged.

    ``budget_training`` (a departure from LightVLA): train on the patches the budget keeps at inference, ranked the
    same way but from the noisy votes and scores, instead of one row per noisy vote. The kept patches' soft votes
    (``sum_i softmax(S)[i, j]``) enter as a straight-through bias on their attention logits, so the scores learn
    which patches the policy attends to. Needs ``keep_tokens`` or ``keep_ratio``; train and eval keep the same count.

    ``gate_dropped_patches`` (with ``budget_training``, a departure from LightVLA): train on all N patches, the
    dropped ones weighted ``DROPPED_KEY_WEIGHT`` in attention (a logit bias of ``log(w)``, ``w`` = 1 kept or the
    weight dropped) through the straight-through weight ``w + soft_votes - stopgrad(soft_votes)``. The forward is the
    budget's, but the gate's gradient reaches the dropped patches too: the first-order effect of letting each back in
    (in budget training alone only the kept patches' votes learn). Costs the unpruned prefix length in training.

    ``rank_by_soft_votes`` (under a budget, a departure from LightVLA): rank the patches by their soft votes
    ``sum_i softmax(S)[i, j]`` over valid rows (of the noisy scores in training), the quantity budget training's gate
    differentiates, instead of by hard votes and best score. The union selection is unchanged.

    ``score_temperature`` (a departure from LightVLA): score with the cosine of queries and patches divided by this
    temperature instead of ``Q P^T / sqrt(D)``, whose magnitude grows with the width (8 at 64, 45 at 2048). It sets
    the scores' scale against the training noise and the softmax's sharpness (so the gradient's spread over the
    patches) the same way at every width; argmaxes and budget rankings by votes and best score do not depend on it,
    so the eval selection is unchanged. None: LightVLA's scale (the temperature ``1 / sqrt(D)``).

    ``keep_neighbours`` (under a budget, a departure from LightVLA): a radius ``r`` in patches. Each patch is ranked
    by the best rank within ``r`` patches of it on its camera's ``patch_grid x patch_grid`` grid (ties by its own), so
    the budget keeps the ``(2r + 1)^2`` neighbourhoods of the top-ranked patches, in their order, instead of the
    top-ranked patches alone: an object's patches are contiguous, and one the object only grazes scores like the
    background around it. 0: off (LightVLA's ranking). Needs ``patch_grid`` (the pooled patches are camera-major
    grids, row-major).

    ``query_width`` (a departure from LightVLA, whose pruner has no parameters): a learned ``[D, D]`` map of the
    queries, ``query_projection``, initialised to the identity (so the scores start as LightVLA's). Without it the
    scores can only learn through weights the policy shares (the patch and prompt embeddings), where the pruner's
    gradient competes with the action loss's; the map is the pruner's own, so the optimizer moves it at its own pace.
    None: parameter-free.

    ``random_keep`` (eval only, a control): keep as many patches per sample as the selection would, chosen uniformly
    at random among the valid ones (``random_generator`` makes it reproducible).

    ``excluded_patches`` (eval only, a control): ``[N]`` or ``[B, N]`` bool, patches the selection may not keep (the
    shapes testbed's evaluation sets it to the target's patches to ask whether the policy needs them). They still vote;
    a budget counts every valid patch and is filled from the others (the union keeps its other votes).

    ``center_patches``: score with the patches centred on each sample's mean valid patch (``P = rms(patches -
    mean)``). Patch embeddings share a dominant common direction, which makes every patch attend to the task the same
    way: identical queries, identical votes, a union of 2–3 patches (the collapse the seeds report). Centring removes
    that shared component from the scoring only; the selected tokens are the original patches.

    Attributes:
        noise_scale: scale of the uniform noise added to the scores in train mode (>= 0).
        keep_tokens: fixed eval budget in patches, or None.
        keep_ratio: fixed eval budget as a fraction of the valid patches in (0, 1], or None.
        collect_stats: when True every forward writes telemetry (python floats) to ``last_stats``; otherwise
            ``last_stats`` is None and no extra work is done.
        last_selection: the :class:`Selection` of the last eval forward (None after a train forward).
    """

    def __init__(
        self,
        noise_scale: float = 1.0,
        keep_tokens: int | None = None,
        keep_ratio: float | None = None,
        center_patches: bool = False,
        noisy_softmax: bool = False,
        kept_multiple: int | None = None,
        dedup_training: bool = False,
        budget_training: bool = False,
        rank_by_soft_votes: bool = False,
        gate_dropped_patches: bool = False,
        score_temperature: float | None = None,
        keep_neighbours: int = 0,
        patch_grid: int | None = None,
        query_width: int | None = None,
    ):
        super().__init__()
        bad_width = isinstance(query_width, bool) or not isinstance(query_width, int) or query_width < 1
        if query_width is not None and bad_width:
            raise ValueError(f"query_width must be None or an int >= 1, got {query_width!r}")
        self.query_projection = None if query_width is None else nn.Parameter(torch.eye(query_width))
        bad_grid = isinstance(patch_grid, bool) or not isinstance(patch_grid, int) or patch_grid < 1
        if patch_grid is not None and bad_grid:
            raise ValueError(f"patch_grid must be None or an int >= 1, got {patch_grid!r}")
        self.patch_grid = patch_grid
        self.keep_neighbours = keep_neighbours
        if score_temperature is not None and (
            isinstance(score_temperature, bool) or not 0 < score_temperature < math.inf
        ):
            raise ValueError(f"score_temperature must be None or a finite number > 0, got {score_temperature!r}")
        self.score_temperature = score_temperature
        self.gate_dropped_patches = gate_dropped_patches
        self.rank_by_soft_votes = rank_by_soft_votes
        self.center_patches = center_patches
        self.dedup_training = dedup_training
        self.budget_training = budget_training
        self.kept_multiple = kept_multiple
        self.noisy_softmax = noisy_softmax
        self.random_keep = False
        self.random_generator: torch.Generator | None = None
        self.excluded_patches: torch.Tensor | None = None
        self.last_selection: Selection | None = None
        self.noise_scale = noise_scale
        self.keep_tokens = keep_tokens
        self.keep_ratio = keep_ratio
        self.collect_stats = False
        self.last_stats: dict[str, float] | None = None

    @property
    def noise_scale(self) -> float:
        return self._noise_scale

    @noise_scale.setter
    def noise_scale(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < math.inf:
            raise ValueError(f"noise_scale must be a finite number >= 0, got {value!r}")
        self._noise_scale = float(value)

    @property
    def keep_tokens(self) -> int | None:
        return self._keep_tokens

    @keep_tokens.setter
    def keep_tokens(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"keep_tokens must be None or an int >= 1, got {value!r}")
        self._keep_tokens = value

    @property
    def keep_neighbours(self) -> int:
        return self._keep_neighbours

    @keep_neighbours.setter
    def keep_neighbours(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"keep_neighbours must be an int >= 0, got {value!r}")
        self._keep_neighbours = value

    @property
    def keep_ratio(self) -> float | None:
        return self._keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, value: float | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1):
            raise ValueError(f"keep_ratio must be None or a number in (0, 1], got {value!r}")
        self._keep_ratio = None if value is None else float(value)

    def stats(self) -> dict[str, float]:
        """The telemetry of the last forward that collected it, plus ``noise_scale`` (only ``noise_scale`` if none).

        Keys are the metric names training logs with the ``prune/`` prefix (see docs/lightvla_pruning.md).
        """
        return {**(self.last_stats or {}), "noise_scale": self.noise_scale}

    def metrics(self) -> dict[str, float]:
        """:meth:`stats` under the logged names, ``prune/<name>``."""
        return {f"{METRIC_PREFIX}{key}": value for key, value in self.stats().items()}

    def extra_repr(self) -> str:
        budgets = f"keep_tokens={self.keep_tokens}, keep_ratio={self.keep_ratio}"
        variant = (
            f"center_patches={self.center_patches}, noisy_softmax={self.noisy_softmax}, "
            f"budget_training={self.budget_training}, rank_by_soft_votes={self.rank_by_soft_votes}, "
            f"gate_dropped_patches={self.gate_dropped_patches}, score_temperature={self.score_temperature}, "
            f"keep_neighbours={self.keep_neighbours}, query_projection={self.query_projection is not None}"
        )
        return f"noise_scale={self.noise_scale}, {budgets}, {variant}, random_keep={self.random_keep}"

    def forward(
        self,
        patches: torch.Tensor,
        task_tokens: torch.Tensor,
        task_mask: torch.Tensor,
        patch_mask: torch.Tensor,
        patch_positions: torch.Tensor,
        uniform: torch.Tensor | None = None,
    ) -> PrunedPatches:
        """Selects patches.

        Args:
            patches: ``[B, N, D]`` patch embeddings of all cameras, pooled.
            task_tokens: ``[B, T, D]`` task (language + state) embeddings.
            task_mask: ``[B, T]`` bool, False for padding.
            patch_mask: ``[B, N]`` bool, False for patches of an absent camera (never selected, cast no vote).
            patch_positions: ``[B, N]`` long, positions of the patches in the unpruned prefix.
            uniform: ``[B, N, N]`` in [0, 1): the training noise draw to use (scaled by ``noise_scale``) instead of
                a fresh one, e.g. to replay another implementation's draw; ignored in eval mode.
        """
        _check_inputs(patches, task_tokens, task_mask, patch_mask, patch_positions)
        if self.query_projection is not None and self.query_projection.shape[0] != patches.shape[-1]:
            raise ValueError(
                f"query_width={self.query_projection.shape[0]} does not match the patches' width {patches.shape[-1]}"
            )
        scoring = _score(
            patches,
            task_tokens,
            task_mask,
            patch_mask,
            self.center_patches,
            self.score_temperature,
            self.query_projection,
        )
        self.last_selection = None
        if self.training and self.budget_training:
            pruned, noisy_choice, kept_counts = self._select_train_budget(
                patches, scoring.scores, patch_mask, patch_positions, uniform
            )
        elif self.training:
            pruned, noisy_choice = self._select_train(patches, scoring.scores, patch_mask, patch_positions, uniform)
            kept_counts = None
        else:
            pruned, kept_counts = self._select_eval(patches, scoring.scores, patch_mask, patch_positions)
            noisy_choice = None
        self.last_stats = None
        if self.collect_stats:
            with torch.no_grad():
                self.last_stats = _telemetry(scoring, task_mask, patch_mask, kept_counts, noisy_choice)
        return pruned

    def _noisy(self, scores: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
        """``S + U(0, 1) * noise_scale`` (``uniform`` replaces the draw)."""
        if self.noise_scale == 0:
            return scores
        noise = torch.rand_like(scores) if uniform is None else uniform.to(scores)
        return scores + noise * self.noise_scale

    def _select_train(
        self,
        patches: torch.Tensor,
        scores: torch.Tensor,
        patch_mask: torch.Tensor,
        positions: torch.Tensor,
        uniform: torch.Tensor | None,
    ) -> tuple[PrunedPatches, torch.Tensor]:
        noisy = self._noisy(scores, uniform)
        choice = noisy.argmax(dim=-1)  # [B, N]
        soft = (noisy if self.noisy_softmax else scores).softmax(dim=-1)
        hard = torch.zeros_like(soft).scatter_(-1, choice[..., None], 1.0)
        weights = hard + soft - soft.detach()
        tokens = weights.to(patches.dtype) @ patches  # [B, N, D], row i = patches[choice_i] in value
        row_valid = patch_mask & patch_mask.gather(1, choice)
        if self.dedup_training:
            return self._merge_duplicate_rows(tokens, row_valid, choice, positions), choice
        return PrunedPatches(tokens, row_valid, positions.gather(1, choice), choice), choice

    def _merge_duplicate_rows(
        self, tokens: torch.Tensor, row_valid: torch.Tensor, choice: torch.Tensor, positions: torch.Tensor
    ) -> PrunedPatches:
        """One token per voted patch: the mean of the valid rows that voted for it, at its position, with their
        count. Voted patches keep their original order; samples are padded to the batch's largest (bucketed) U."""
        batch, num_patches, dim = tokens.shape
        votes = _count_votes(choice, row_valid)  # [B, N]
        voted = votes > 0
        num_voted = voted.sum(dim=1)  # [B]
        width = self._bucketed(num_voted.max(), num_patches) if batch else 0  # U
        unique = torch.sort((~voted).int(), dim=1, stable=True).indices[:, :width]  # [B, U] voted patches first
        mask = torch.arange(width, device=tokens.device)[None, :] < num_voted[:, None]  # [B, U]
        slot = torch.cumsum(voted.long(), dim=1) - 1  # [B, N] each voted patch's place among the voted ones
        row_slot = slot.gather(1, choice).masked_fill(~row_valid, width)  # [B, N], invalid rows to a spare slot
        summed = tokens.new_zeros(batch, width + 1, dim).scatter_add(1, row_slot[..., None].expand(-1, -1, dim), tokens)
        counts = votes.gather(1, unique) * mask  # [B, U]
        merged = summed[:, :width] / counts.clamp(min=1)[..., None].to(tokens.dtype)  # [B, U, D]
        key_bias = counts.clamp(min=1).float().log()  # [B, U]: k identical keys = one key with logit + log k
        return PrunedPatches(merged, mask, positions.gather(1, unique), unique, counts, key_bias)

    def _select_train_budget(
        self,
        patches: torch.Tensor,
        scores: torch.Tensor,
        patch_mask: torch.Tensor,
        positions: torch.Tensor,
        uniform: torch.Tensor | None,
    ) -> tuple[PrunedPatches, torch.Tensor, torch.Tensor]:
        """The budget's patches ranked by the noisy votes and scores, each gated by its straight-through soft votes."""
        if self.keep_tokens is None and self.keep_ratio is None:
            raise ValueError("budget_training needs a budget: set keep_tokens or keep_ratio")
        noisy = self._noisy(scores, uniform)
        choice = noisy.argmax(dim=-1)  # [B, N]
        keep = self._kept_by_budget(noisy, _count_votes(choice, patch_mask), patch_mask)  # ranked by the noisy scores
        soft_votes = _soft_votes(noisy if self.noisy_softmax else scores, patch_mask)  # [B, N]
        if self.gate_dropped_patches:
            return _gate_all_patches(patches, keep, soft_votes, patch_mask, positions), choice, keep.sum(dim=1)
        pruned, counts = self._gather_kept(patches, keep, positions)
        gate = (soft_votes - soft_votes.detach()).gather(1, pruned.kept_indices) * pruned.mask  # [B, K], 0 in value
        return pruned._replace(key_bias=gate), choice, counts

    def _select_eval(
        self, patches: torch.Tensor, scores: torch.Tensor, patch_mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[PrunedPatches, torch.Tensor]:
        votes = _count_votes(scores.argmax(dim=-1), patch_mask)  # [B, N]
        selectable = patch_mask
        if self.excluded_patches is not None:
            selectable = patch_mask & ~self.excluded_patches.to(patch_mask.device).expand_as(patch_mask)
        keep = self._kept_by_budget(scores, votes, patch_mask, selectable)
        if self.random_keep:
            keep = self._random_subset(selectable, keep.sum(dim=1))
        pruned, counts = self._gather_kept(patches, keep, positions)
        self.last_selection = Selection(pruned.kept_indices, pruned.mask, votes)
        return pruned, counts

    def _kept_by_budget(
        self,
        scores: torch.Tensor,
        votes: torch.Tensor,
        patch_mask: torch.Tensor,
        selectable: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, N]`` bool: the voted patches, or under a budget (of the valid patches) the top-ranked ones (votes,
        then best score; or the soft votes with ``rank_by_soft_votes``), among the ``selectable`` ones (default:
        every valid patch)."""
        selectable = patch_mask if selectable is None else selectable
        budget = self._budget(patch_mask)  # [B] or None
        if budget is None:
            return (votes > 0) & selectable
        best_score = scores.masked_fill(~patch_mask[:, :, None], _NEVER).amax(dim=1)
        if self.rank_by_soft_votes:
            votes = _soft_votes(scores.detach(), patch_mask)
        ranks = _rank_patches(votes, best_score, selectable)
        if self.keep_neighbours:
            ranks = _neighbourhood_ranks(ranks, selectable, self._grid_side(ranks.shape[1]), self.keep_neighbours)
        return (ranks < budget[:, None]) & selectable

    def _grid_side(self, num_patches: int) -> int:
        """The side of each camera's patch grid; raises unless the pooled patches are whole grids of it."""
        side = self.patch_grid
        if side is None or num_patches % (side * side):
            raise ValueError(
                f"keep_neighbours needs the pooled patches to be camera grids of patch_grid x patch_grid, got "
                f"patch_grid={side} for {num_patches} patches"
            )
        return side

    def _gather_kept(
        self, patches: torch.Tensor, keep: torch.Tensor, positions: torch.Tensor
    ) -> tuple[PrunedPatches, torch.Tensor]:
        """The kept patches in their original order, padded to the batch's largest (bucketed) count; the counts."""
        counts = keep.sum(dim=1)  # [B]
        num_kept = (
            self._bucketed(self._largest_kept(counts, patches.shape[1]), patches.shape[1]) if counts.numel() else 0
        )  # K
        # Stable sort puts the kept patches first, in their original order.
        kept_indices = torch.sort((~keep).int(), dim=1, stable=True).indices[:, :num_kept]  # [B, K]
        mask = torch.arange(num_kept, device=patches.device)[None, :] < counts[:, None]  # [B, K]
        gather_index = kept_indices[..., None].expand(-1, -1, patches.shape[-1])  # [B, K, D]
        tokens = patches.gather(1, gather_index) * mask[..., None]  # [B, K, D], padding rows zeroed
        return PrunedPatches(tokens, mask, positions.gather(1, kept_indices), kept_indices), counts

    def _largest_kept(self, counts: torch.Tensor, num_patches: int) -> torch.Tensor:
        """The batch's largest kept count; on meta tensors (shapes only, as the memory estimator runs the model) the
        most the budget can keep, every patch valid."""
        if counts.device.type != "meta":
            return counts.max()
        budget = self._budget(torch.ones(1, num_patches, dtype=torch.bool, device="cpu"))
        return torch.tensor(num_patches, device="cpu") if budget is None else budget[0]

    def _bucketed(self, largest: torch.Tensor, num_patches: int) -> int:
        """K: the batch's largest kept count, rounded up to ``kept_multiple`` (rows past a sample's own count are
        masked padding). Rounded before it becomes a Python int, so a compiled model is specialised on the bucket."""
        if self.kept_multiple:
            multiple = self.kept_multiple
            largest = ((largest + multiple - 1) // multiple * multiple).clamp(max=num_patches)
        return int(largest)

    def _random_subset(self, patch_mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` bool: ``counts[b]`` valid patches of sample b, uniformly at random."""
        device = self.random_generator.device if self.random_generator is not None else patch_mask.device
        noise = torch.rand(patch_mask.shape, generator=self.random_generator, device=device).to(patch_mask.device)
        order = noise.masked_fill(~patch_mask, -1.0).argsort(dim=1, descending=True)  # valid patches first
        ranks = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
        )
        return ranks < counts[:, None]

    def _budget(self, patch_mask: torch.Tensor) -> torch.Tensor | None:
        """``[B]`` patches to keep per sample under a fixed budget, or None for the implicit (union) selection."""
        valid = patch_mask.sum(dim=1)
        if self.keep_tokens is not None:
            return valid.clamp(max=self.keep_tokens)
        if self.keep_ratio is not None:
            wanted = torch.ceil(valid.double() * self.keep_ratio - _CEIL_TOLERANCE).long().clamp(min=1)
            return torch.minimum(wanted, valid)
        return None


def _gate_all_patches(
    patches: torch.Tensor,
    keep: torch.Tensor,
    soft_votes: torch.Tensor,
    patch_mask: torch.Tensor,
    positions: torch.Tensor,
) -> PrunedPatches:
    """All N patches, the dropped ones at ``DROPPED_KEY_WEIGHT``: the key bias is ``log(w + soft_votes -
    stopgrad(soft_votes))``, ``log(w)`` in value with the gradient ``1 / w`` into the soft votes."""
    weight = torch.where(keep, 1.0, DROPPED_KEY_WEIGHT)  # [B, N]
    gate = weight.log() + (soft_votes - soft_votes.detach()) / weight  # [B, N]
    indices = torch.arange(patches.shape[1], device=patches.device).expand(patches.shape[0], -1)  # [B, N]
    return PrunedPatches(patches, patch_mask, positions, indices, key_bias=gate * patch_mask)


def _check_inputs(
    patches: torch.Tensor,
    task_tokens: torch.Tensor,
    task_mask: torch.Tensor,
    patch_mask: torch.Tensor,
    patch_positions: torch.Tensor,
) -> None:
    if patches.ndim != 3:
        raise ValueError(f"patches must be [B, N, D], got shape {tuple(patches.shape)}")
    batch, num_patches, dim = patches.shape
    if task_tokens.ndim != 3 or task_tokens.shape[0] != batch or task_tokens.shape[2] != dim:
        raise ValueError(f"task_tokens must be [{batch}, T, {dim}], got shape {tuple(task_tokens.shape)}")
    expected = {
        "task_mask": (task_mask, (batch, task_tokens.shape[1])),
        "patch_mask": (patch_mask, (batch, num_patches)),
        "patch_positions": (patch_positions, (batch, num_patches)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(tensor.shape)}")
    for name in ("task_mask", "patch_mask"):
        if expected[name][0].dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got {expected[name][0].dtype}")
    if patch_positions.dtype != torch.long:
        raise ValueError(f"patch_positions must be a long tensor, got {patch_positions.dtype}")


def _telemetry(
    scoring: _Scoring,
    task_mask: torch.Tensor,
    patch_mask: torch.Tensor,
    kept_counts: torch.Tensor | None,
    noisy_choice: torch.Tensor | None,
) -> dict[str, float]:
    """Batch-level pruning diagnostics (one host sync). See docs/lightvla_pruning.md for how to read them."""
    scores = scoring.scores.detach()
    valid = patch_mask.sum(dim=1).float()
    det_votes = _count_votes(scores.argmax(dim=-1), patch_mask)
    det_union, det_share = _argmax_stats(det_votes, valid)
    kept = det_union if kept_counts is None else kept_counts.float()
    entry_mask = patch_mask[:, :, None] & patch_mask[:, None, :]
    top2 = scores.topk(min(2, scores.shape[-1]), dim=-1).values
    gap_rows = patch_mask & (valid[:, None] >= 2)
    gap = ((top2[..., 0] - top2[..., -1]) * gap_rows).sum(dim=1) / gap_rows.sum(dim=1)  # NaN if no such row
    per_sample = {
        "kept_tokens_overall": kept,
        "kept_ratio_overall": kept / valid.clamp(min=1.0),
        "task_valid_len": task_mask.sum(dim=1).float(),
        "argmax_union": det_union,
        "argmax_top1_share": det_share,
        "patches_std": _masked_token_std(scoring.patches_n, patch_mask),
        "task_std": _masked_token_std(scoring.task_n, task_mask),
        "queries_std": _masked_token_std(scoring.queries, patch_mask),
        "query_cosine_before_norm": _mean_pairwise_cosine(scoring.queries_raw, patch_mask),
        "query_cosine_after_norm": _mean_pairwise_cosine(scoring.queries, patch_mask),
        "score_abs_max_det": torch.where(entry_mask, scores.abs(), 0.0).amax(dim=(1, 2)),
        "score_top1_gap_det": gap,
    }
    if noisy_choice is not None:
        noisy_union, noisy_share = _argmax_stats(_count_votes(noisy_choice, patch_mask), valid)
        per_sample["kept_tokens_overall_noisy"] = noisy_union
        per_sample["argmax_union_noisy"] = noisy_union
        per_sample["argmax_top1_share_noisy"] = noisy_share
    names = [_stat_key(name) for name in per_sample]
    means = torch.stack(list(per_sample.values())).nanmean(dim=1)
    values = torch.cat([means, kept.min()[None], kept.max()[None]]).tolist()  # the only host sync
    return dict(zip([*names, "kept_tokens_overall_min", "kept_tokens_overall_max"], values, strict=True))


def _stat_key(name: str) -> str:
    """Per-sample stat name -> telemetry key (``argmax_union_noisy`` -> ``argmax_union_mean_noisy``)."""
    if name.endswith("_noisy"):
        return f"{name.removesuffix('_noisy')}_mean_noisy"
    return f"{name}_mean"

"""LightVLA visual-token pruning: a parameter-free, task-conditioned selector of image patches.

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

from openpi.models.pi0_config import Pi0Config

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
    scores: torch.Tensor  # [B, N, N] Q P^T / sqrt(D), invalid columns set to _NEVER


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
) -> _Scoring:
    """Computes the patch-to-patch scores ``Q P^T / sqrt(D)`` (``|S| <= sqrt(D)``); samples without any valid task
    token get zero queries (no NaN)."""
    patches_n = _rms_norm(_center(patches, patch_mask) if center_patches else patches)
    task_n = _rms_norm(task_tokens)
    has_task = task_mask.any(dim=1)
    attend = task_mask | ~has_task[:, None]  # an all-False row would make SDPA return NaN
    queries_raw = F.scaled_dot_product_attention(patches_n, task_n, task_n, attn_mask=attend[:, None, :])
    queries_raw = queries_raw * has_task[:, None, None]
    queries = _rms_norm(queries_raw)
    scores = (queries @ patches_n.transpose(1, 2)).float() / math.sqrt(patches.shape[-1])  # float32 under autocast
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
    """``[B, N]`` rank of each patch (0 = most important): votes desc, then best score desc, then index asc; the
    patches outside ``patch_mask`` last."""
    votes = votes.masked_fill(~patch_mask, -1)
    by_score = torch.sort(best_score, dim=1, descending=True, stable=True).indices
    by_votes = torch.sort(votes.gather(1, by_score), dim=1, descending=True, stable=True).indices
    order = by_score.gather(1, by_votes)
    ranks = torch.empty_like(order)
    arange = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, arange)


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


def select_kept(
    scores: torch.Tensor,
    votes: torch.Tensor,
    patch_mask: torch.Tensor,
    budget: torch.Tensor | None,
    selectable: torch.Tensor,
) -> torch.Tensor:
    """``[B, N]`` bool, the kept patches among the ``selectable`` ones: the voted ones (``budget`` None: the union of
    the votes), or the ``budget [B]`` best-ranked ones (votes, then best score over the valid rows)."""
    if budget is None:
        return (votes > 0) & selectable
    best_score = scores.masked_fill(~patch_mask[:, :, None], _NEVER).amax(dim=1)  # [B, N]
    return (_rank_patches(votes, best_score, selectable) < budget[:, None]) & selectable


@dataclasses.dataclass(frozen=True)
class PrunerSettings:
    """The pruner's settings (:class:`ImageTokenPruner`); a π0 config's ``token_prune_*`` fields by :meth:`of`."""

    center_patches: bool = True
    dedup_training: bool = True
    budget_training: bool = False
    gate_dropped_patches: bool = False
    gate_dropped_sample: float | None = None
    kept_multiple: int | None = None
    noise_scale: float = 1.0
    keep_tokens: int | None = None
    keep_ratio: float | None = None

    @classmethod
    def of(cls, config: Pi0Config) -> PrunerSettings:
        return cls(
            config.token_prune_center_patches,
            config.token_prune_dedup_training,
            config.token_prune_budget_training,
            config.token_prune_gate_dropped_patches,
            config.token_prune_gate_dropped_sample,
            config.token_prune_kept_multiple,
            config.token_prune_noise_scale,
            config.token_prune_keep_tokens,
            config.token_prune_keep_ratio,
        )


class ImageTokenPruner(nn.Module):
    """LightVLA's pruner over the pooled patches of all cameras (camera-major); it has no parameters.

    Scoring: each patch's query is its attention over the task tokens (the prompt, with the discretised state for
    π0.5); it scores every patch ``S = Q P^T / sqrt(D)`` and votes for its argmax. With ``center_patches`` the patches
    are centred on the sample's mean valid patch for the scoring only: patch embeddings share a dominant direction
    that makes every patch ask the same question and the votes collapse onto a few patches.

    Selection:

    - eval: the union of the valid rows' votes or, under a budget (``keep_tokens`` patches, else ``ceil(keep_ratio *
      valid patches)``), the best-ranked patches (votes desc, best score desc, index asc); they keep their original
      order, padded to the batch's largest count rounded up to ``kept_multiple``.
    - train, union: ``U(0, 1) * noise_scale`` is added to the scores and row i becomes the patch of its argmax through
      the straight-through weights ``onehot + softmax(S) - stopgrad(softmax(S))`` (the voted patch in value, the
      gradient of the clean softmax). ``dedup_training`` merges the rows that voted for one patch into one token with
      ``log(count)`` on its attention logit: the same attention over fewer tokens.
    - train, ``budget_training``: the budget's patches ranked from the noisy votes and scores, each gated on its
      attention logit by its straight-through soft votes ``v_j = sum_i softmax(S)[i, j]`` (0 in value).
      ``gate_dropped_patches`` keeps every patch in the prefix, the dropped ones at the attention weight
      ``w = DROPPED_KEY_WEIGHT`` through ``log(w + v - stopgrad(v))``: the budget's forward, and a gradient that
      reaches the dropped patches too. ``gate_dropped_sample`` gates only a uniform sample of that share of each
      sample's dropped patches, their gate's gradient divided by the share (the inclusion probability): an unbiased
      estimate of gating them all, on a prefix of the budget plus the sample.

    The settings are the model config's ``token_prune_*`` fields (or :class:`PrunerSettings`); ``noise_scale``,
    ``keep_tokens`` and ``keep_ratio`` may be changed between calls. Subclasses change what the eval selection keeps
    by overriding :meth:`keep_mask`.

    Attributes:
        collect_stats: when True every forward writes its telemetry (python floats) to ``last_stats``; otherwise
            ``last_stats`` is None and no extra work is done.
        last_selection: the :class:`Selection` of the last eval forward (None after a train forward).
    """

    def __init__(self, config: Pi0Config | PrunerSettings):
        super().__init__()
        settings = PrunerSettings.of(config) if isinstance(config, Pi0Config) else config
        self.center_patches = settings.center_patches
        self.dedup_training = settings.dedup_training
        self.budget_training = settings.budget_training
        self.gate_dropped_patches = settings.gate_dropped_patches
        self.gate_dropped_sample = settings.gate_dropped_sample
        self.kept_multiple = settings.kept_multiple
        self.noise_scale = settings.noise_scale
        self.keep_tokens = settings.keep_tokens
        self.keep_ratio = settings.keep_ratio
        self.collect_stats = False
        self.last_stats: dict[str, float] | None = None
        self.last_selection: Selection | None = None

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
        return (
            f"noise_scale={self.noise_scale}, keep_tokens={self.keep_tokens}, keep_ratio={self.keep_ratio}, "
            f"center_patches={self.center_patches}, budget_training={self.budget_training}, "
            f"gate_dropped_patches={self.gate_dropped_patches}, gate_dropped_sample={self.gate_dropped_sample}"
        )

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
        scoring = _score(patches, task_tokens, task_mask, patch_mask, self.center_patches)
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

    def keep_mask(self, scores: torch.Tensor, votes: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """The eval selection ``[B, N]`` bool from the scores ``[B, N, N]`` and the votes ``[B, N]``: the union of the
        votes, or the budget's best-ranked patches."""
        return select_kept(scores, votes, patch_mask, self.budget(patch_mask), patch_mask)

    def budget(self, patch_mask: torch.Tensor) -> torch.Tensor | None:
        """``[B]`` patches to keep per sample under a fixed budget, or None for the union selection."""
        valid = patch_mask.sum(dim=1)
        if self.keep_tokens is not None:
            return valid.clamp(max=self.keep_tokens)
        if self.keep_ratio is not None:
            wanted = torch.ceil(valid.double() * self.keep_ratio - _CEIL_TOLERANCE).long().clamp(min=1)
            return torch.minimum(wanted, valid)
        return None

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
        choice = self._noisy(scores, uniform).argmax(dim=-1)  # [B, N]
        soft = scores.softmax(dim=-1)
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
        budget = self.budget(patch_mask)
        if budget is None:
            raise ValueError("budget_training needs a budget: set keep_tokens or keep_ratio")
        noisy = self._noisy(scores, uniform)
        choice = noisy.argmax(dim=-1)  # [B, N]
        keep = select_kept(noisy, _count_votes(choice, patch_mask), patch_mask, budget, patch_mask)
        soft_votes = _soft_votes(scores, patch_mask)  # [B, N]
        if self.gate_dropped_patches and self.gate_dropped_sample is None:
            return _gate_all_patches(patches, keep, soft_votes, patch_mask, positions), choice, keep.sum(dim=1)
        if self.gate_dropped_patches:
            sampled, inclusion = sample_dropped(keep, patch_mask, self.gate_dropped_sample)
            width = self._largest_included(keep | sampled)
            gated = gate_sampled_patches(patches, keep, sampled, inclusion, soft_votes, positions, width)
            return gated, choice, keep.sum(dim=1)
        pruned, counts = self._gather_kept(patches, keep, positions)
        gate = (soft_votes - soft_votes.detach()).gather(1, pruned.kept_indices) * pruned.mask  # [B, K], 0 in value
        return pruned._replace(key_bias=gate), choice, counts

    def _select_eval(
        self, patches: torch.Tensor, scores: torch.Tensor, patch_mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[PrunedPatches, torch.Tensor]:
        votes = _count_votes(scores.argmax(dim=-1), patch_mask)  # [B, N]
        pruned, counts = self._gather_kept(patches, self.keep_mask(scores, votes, patch_mask), positions)
        self.last_selection = Selection(pruned.kept_indices, pruned.mask, votes)
        return pruned, counts

    def _gather_kept(
        self, patches: torch.Tensor, keep: torch.Tensor, positions: torch.Tensor
    ) -> tuple[PrunedPatches, torch.Tensor]:
        """The kept patches in their original order, padded to the batch's largest (bucketed) count; the counts."""
        counts = keep.sum(dim=1)  # [B]
        num_kept = (
            self._bucketed(self._largest_kept(counts, patches.shape[1]), patches.shape[1]) if counts.numel() else 0
        )  # K
        return gather_patches(patches, keep, positions, num_kept), counts

    def _largest_kept(self, counts: torch.Tensor, num_patches: int) -> torch.Tensor:
        """The batch's largest kept count; on meta tensors (shapes only, as the memory estimator runs the model) the
        most the budget can keep, every patch valid."""
        if counts.device.type != "meta":
            return counts.max()
        budget = self.budget(torch.ones(1, num_patches, dtype=torch.bool, device="cpu"))
        return torch.tensor(num_patches, device="cpu") if budget is None else budget[0]

    def _largest_included(self, included: torch.Tensor) -> int:
        """The batch's largest count of kept and sampled patches; on meta tensors the most they can be, every patch
        valid."""
        if included.device.type != "meta":
            return int(included.sum(dim=1).max()) if included.shape[0] else 0
        num_patches = included.shape[1]
        budget = int(self.budget(torch.ones(1, num_patches, dtype=torch.bool, device="cpu"))[0])
        dropped = num_patches - budget
        return budget + min(max(math.ceil(dropped * self.gate_dropped_sample - _CEIL_TOLERANCE), 1), dropped)

    def _bucketed(self, largest: torch.Tensor, num_patches: int) -> int:
        """K: the batch's largest kept count, rounded up to ``kept_multiple`` (rows past a sample's own count are
        masked padding). Rounded before it becomes a Python int, so a compiled model is specialised on the bucket."""
        if self.kept_multiple:
            multiple = self.kept_multiple
            largest = ((largest + multiple - 1) // multiple * multiple).clamp(max=num_patches)
        return int(largest)


def gather_patches(patches: torch.Tensor, keep: torch.Tensor, positions: torch.Tensor, width: int) -> PrunedPatches:
    """The ``keep [B, N]`` patches in their original order, padded (zeroed, masked) to ``width`` tokens."""
    counts = keep.sum(dim=1)  # [B]
    # Stable sort puts the kept patches first, in their original order.
    kept_indices = torch.sort((~keep).int(), dim=1, stable=True).indices[:, :width]  # [B, K]
    mask = torch.arange(width, device=patches.device)[None, :] < counts[:, None]  # [B, K]
    gather_index = kept_indices[..., None].expand(-1, -1, patches.shape[-1])  # [B, K, D]
    tokens = patches.gather(1, gather_index) * mask[..., None]  # [B, K, D], padding rows zeroed
    return PrunedPatches(tokens, mask, positions.gather(1, kept_indices), kept_indices)


def sample_dropped(
    keep: torch.Tensor, patch_mask: torch.Tensor, share: float, draw: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform sample of ``ceil(share * dropped)`` of each sample's valid dropped patches (``draw [B, N]`` in [0, 1)
    replaces the random draw: the lowest draws are taken); returns it ``[B, N]`` bool and each sample's inclusion
    probability ``[B]`` (1 without dropped patches)."""
    dropped = patch_mask & ~keep  # [B, N]
    num_dropped = dropped.sum(dim=1)  # [B]
    wanted = torch.ceil(num_dropped.double() * share - _CEIL_TOLERANCE).long()
    wanted = torch.minimum(wanted.clamp(min=1), num_dropped)  # [B]
    draw = torch.rand(dropped.shape, device=keep.device) if draw is None else draw
    order = draw.masked_fill(~dropped, 2.0).argsort(dim=1)  # dropped patches first, lowest draw first
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    inclusion = torch.where(num_dropped > 0, wanted.float() / num_dropped.clamp(min=1).float(), 1.0)
    return dropped & (ranks < wanted[:, None]), inclusion


def gate_sampled_patches(
    patches: torch.Tensor,
    keep: torch.Tensor,
    sampled: torch.Tensor,
    inclusion: torch.Tensor,
    soft_votes: torch.Tensor,
    positions: torch.Tensor,
    width: int,
) -> PrunedPatches:
    """The kept and the ``sampled [B, N]`` dropped patches in their original order, padded to ``width``; a kept
    one gated by ``v - stopgrad(v)`` of its soft votes ``v``, a sampled one at ``DROPPED_KEY_WEIGHT`` through ``log(w)
    + (v - stopgrad(v)) / (w * inclusion)``: the budget's forward, and each dropped patch's gate gradient in
    expectation over the samples what gating every dropped patch gives it."""
    pruned = gather_patches(patches, keep | sampled, positions, width)  # [B, K + M]
    delta = (soft_votes - soft_votes.detach()).gather(1, pruned.kept_indices)  # [B, K + M], 0 in value
    dropped_gate = math.log(DROPPED_KEY_WEIGHT) + delta / (DROPPED_KEY_WEIGHT * inclusion[:, None])
    gate = torch.where(keep.gather(1, pruned.kept_indices), delta, dropped_gate)
    return pruned._replace(key_bias=gate * pruned.mask)


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

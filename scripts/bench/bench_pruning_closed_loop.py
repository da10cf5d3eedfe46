"""Does learned pruning keep a policy's sight? Closed-loop success on held-out shapes scenes, with the controls.

    uv run scripts/bench/bench_pruning_closed_loop.py --seeds 0 1 2 --episodes 200 --jobs 2

Trains each training arm per seed with the project's trainer (``pi05_shapes`` / ``pi05_shapes_lightvla`` variants),
then evaluates every evaluation arm closed loop on the same held-out scenes (``scripts/eval_closed_loop.py``'s
seeds). Resumable across sessions: each (evaluation arm, seed) result is a JSON file committed under
``--results-dir``; checkpoints live under ``--work-dir`` and a training arm is (re)trained only while an evaluation
that needs its weights is missing. Writes the Markdown table to ``--output`` and the plot to ``--plot``.

Training arms: ``blind`` (cameras masked in training and evaluation), ``unpruned``, ``budget_trained25`` (trained on
the 25% budget it is served with, ranked from the noisy votes, a straight-through gate on the kept patches' attention
logits; a departure from LightVLA), ``budget_trained10`` (the same at 10%), ``budget_trained25_soft`` (the same at
25%, the budget ranked by the soft votes its gate trains), ``budget_trained25_gated`` (the ``*_lightvla`` configs'
pruner: the same at 25%, the dropped patches kept in training at a negligible attention weight so the gate's gradient
reaches them too), ``budget_trained25_gated_soft`` (the same, the budget ranked by the soft votes in training and
at inference: the top-k of the quantity the gate differentiates, an idea toward target recall),
``budget_trained25_gated_t05`` (the default with the scores as cosines over a temperature of 0.5, ``|S| <= 2``
instead of ``sqrt(64) = 8``: more training noise against the scores and a flatter softmax, so the gate's gradient
spreads over more patches; another idea toward target recall), ``budget_trained25_gated_t1`` (the same at a
temperature of 1, ``|S| <= 1``: the next step of that dose),
``budget_trained25_gated_finetuned`` (the default pruner trained ``--finetune-steps`` from the final ``unpruned``
weights of its seed, which it trains first if needed: a pruner fine-tuned on a policy that already sees, as users
fine-tune the π0.5 base), ``budget_trained25_gated_finetuned_long`` (the same, twice ``--finetune-steps``: does a
longer fine-tuning lift target recall?), ``budget_trained25_gated_finetuned_query_proj`` (the same fine-tuning with
the pruner's own learned map of its queries, ``token_prune_query_projection``: can the scorer learn to find the
target when it need not learn only through the weights the policy shares?), ``released`` (LightVLA as released:
union of the argmaxes, no centring, softmax of the noisy scores), ``union`` (the union with centred scoring),
``released_clean_softmax`` and ``centred_noisy_softmax`` (the softmax ablations), ``plan_b`` (the noisy actions in
the pruner's context in training, the sampling's starting noise at inference) and ``plan_1`` (a projected state
token in the pruner's context): the seeds' proposals, on the union.
Evaluation arms add, on the unpruned weights, the training-free budgets ``budget10`` / ``budget25`` (the pruner's
scoring, untrained, ranks the patches) and their random control ``random25`` (25% of the patches chosen at random);
on the budget-trained weights ``budget_trained25_random`` / ``budget_trained10_random`` /
``budget_trained25_soft_random`` / ``budget_trained25_gated_random`` / ``budget_trained25_gated_soft_random`` /
``budget_trained25_gated_t05_random`` / ``budget_trained25_gated_t1_random`` /
``budget_trained25_gated_finetuned_random`` / ``budget_trained25_gated_finetuned_long_random`` /
``budget_trained25_gated_finetuned_query_proj_random`` (the same count at random)
and ``budget_trained25_at10`` (served at 10%); on the union's weights ``union_random_k`` (as many patches as it
keeps, at random) and ``union_budget25`` (its scores ranking a 25% budget); on the released pruner's weights
``released_random_k``. What target recall measures: ``unpruned_no_target`` (the unpruned weights, every patch but the
named target's) and ``budget_trained25_gated_no_target`` (the default's budget filled without the target's patches),
with ``budget_trained25_gated_no_target_random`` (as many patches off the target, at random), and
``budget_trained25_gated_finetuned_no_target``; ``unpruned_no_target_far`` and
``budget_trained25_gated_finetuned_no_target_far`` (the target's patches withheld only while it is outside the wrist
camera's view: does the policy need them there?). ``budget_trained25_gated_finetuned_neighbours``: the fine-tuned
default's budget filled with the 3 x 3 neighbourhoods of its top-ranked patches (``token_prune_keep_neighbours=1``,
training-free), an idea toward target recall; ``budget_trained25_gated_finetuned_neighbours_trained``: the same
neighbourhoods in the fine-tuning too (the gate then sees and trains the patches around each top-ranked one), with
its random control ``budget_trained25_gated_finetuned_neighbours_trained_random`` and
``budget_trained25_gated_finetuned_neighbours_trained_served_plain`` (those weights served without neighbourhoods:
did the training move the scores, or does the serving rule do the work?). ``unpruned_long``: the ``unpruned`` policy
trained twice ``--finetune-steps`` more from its own final weights (a fresh warm-up and cosine), a stronger base;
``budget_trained25_gated_finetuned_long_base`` and ``budget_trained25_gated_finetuned_neighbours_trained_long_base``:
those two fine-tunings from it instead (does a policy that sees better give the pruner its target?), each with its
``_random`` control.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import tyro

from openpi.envs.shapes import ActionSpace

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"

# LightVLA's own selection (every noisy argmax in training, their union at inference), which the *_lightvla configs'
# budget training replaces: the arms that study it pin it.
UNION = {
    "token_prune_budget_training": False,
    "token_prune_keep_ratio": None,
    "token_prune_gate_dropped_patches": False,
}
# Budget training as it was measured before the dropped patches were gated (the default until 2026-12-03).
BUDGET = {"token_prune_budget_training": True, "token_prune_gate_dropped_patches": False}
# Gated budget training at 25%, the *_lightvla configs' pruner since 2026-12-03.
GATED25 = {**BUDGET, "token_prune_keep_ratio": 0.25, "token_prune_gate_dropped_patches": True}
# name -> (config, model overrides, data overrides)
TRAINING_ARMS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "blind": ("pi05_shapes", {}, {"mask_images": True}),
    "unpruned": ("pi05_shapes", {}, {}),
    "released": (
        "pi05_shapes_lightvla",
        {**UNION, "token_prune_center_patches": False, "token_prune_noisy_softmax": True},
        {},
    ),
    "union": ("pi05_shapes_lightvla", UNION, {}),
    "released_clean_softmax": (
        "pi05_shapes_lightvla",
        {**UNION, "token_prune_center_patches": False, "token_prune_noisy_softmax": False},
        {},
    ),
    "centred_noisy_softmax": (
        "pi05_shapes_lightvla",
        {**UNION, "token_prune_center_patches": True, "token_prune_noisy_softmax": True},
        {},
    ),
    "plan_b": ("pi05_shapes_lightvla", {**UNION, "token_prune_action_context": True}, {}),
    "plan_1": ("pi05_shapes_lightvla", {**UNION, "token_prune_state_token": True}, {}),
    "budget_trained25": ("pi05_shapes_lightvla", {**BUDGET, "token_prune_keep_ratio": 0.25}, {}),
    "budget_trained10": ("pi05_shapes_lightvla", {**BUDGET, "token_prune_keep_ratio": 0.10}, {}),
    "budget_trained25_soft": (
        "pi05_shapes_lightvla",
        {**BUDGET, "token_prune_keep_ratio": 0.25, "token_prune_rank_by_soft_votes": True},
        {},
    ),
    "budget_trained25_gated": ("pi05_shapes_lightvla", GATED25, {}),
    "budget_trained25_gated_soft": ("pi05_shapes_lightvla", {**GATED25, "token_prune_rank_by_soft_votes": True}, {}),
    "budget_trained25_gated_t05": ("pi05_shapes_lightvla", {**GATED25, "token_prune_score_temperature": 0.5}, {}),
    "budget_trained25_gated_t1": ("pi05_shapes_lightvla", {**GATED25, "token_prune_score_temperature": 1.0}, {}),
    "budget_trained25_gated_finetuned": ("pi05_shapes_lightvla", GATED25, {}),
    "budget_trained25_gated_finetuned_long": ("pi05_shapes_lightvla", GATED25, {}),
    "budget_trained25_gated_finetuned_query_proj": (
        "pi05_shapes_lightvla",
        {**GATED25, "token_prune_query_projection": True},
        {},
    ),
    "budget_trained25_gated_finetuned_neighbours_trained": (
        "pi05_shapes_lightvla",
        {**GATED25, "token_prune_keep_neighbours": 1},
        {},
    ),
    "unpruned_long": ("pi05_shapes", {}, {}),
    "budget_trained25_gated_finetuned_long_base": ("pi05_shapes_lightvla", GATED25, {}),
    "budget_trained25_gated_finetuned_neighbours_trained_long_base": (
        "pi05_shapes_lightvla",
        {**GATED25, "token_prune_keep_neighbours": 1},
        {},
    ),
}
# Training arms that start from another training arm's final weights of the same seed and train ``--finetune-steps``
# more: the default pruner fine-tuned on a policy that already looks at its target, as users fine-tune the π0.5 base
# (the pruner has no parameters of its own, so the unpruned weights load as they are).
WARM_STARTS: dict[str, str] = {
    "budget_trained25_gated_finetuned": "unpruned",
    "budget_trained25_gated_finetuned_long": "unpruned",
    "budget_trained25_gated_finetuned_query_proj": "unpruned",
    "budget_trained25_gated_finetuned_neighbours_trained": "unpruned",
    "unpruned_long": "unpruned",
    "budget_trained25_gated_finetuned_long_base": "unpruned_long",
    "budget_trained25_gated_finetuned_neighbours_trained_long_base": "unpruned_long",
}
# The policies trained without pruning: each arm's vision gap is measured against the one its weights descend from.
UNPRUNED_ARMS = ("unpruned", "unpruned_long")
# Warm-started arms that train a multiple of ``--finetune-steps`` (the others: one).
FINETUNE_MULTIPLES: dict[str, int] = {"budget_trained25_gated_finetuned_long": 2, "unpruned_long": 2}
DEFAULT_ARM = "budget_trained25_gated"  # what pi05_shapes_lightvla trains as it stands (a test holds them equal)
CORE_TRAINING_ARMS = ("blind", "unpruned", "released", "union", DEFAULT_ARM)
# name -> (training arm whose weights it uses, config it is evaluated as, eval options)
EVAL_ARMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "blind": ("blind", "blind", {}),
    "unpruned": ("unpruned", "unpruned", {}),
    "budget25": ("unpruned", "union", {"token_prune_keep_ratio": 0.25}),
    "budget10": ("unpruned", "union", {"token_prune_keep_ratio": 0.10}),
    "random25": ("unpruned", "union", {"token_prune_keep_ratio": 0.25, "random_keep": True}),
    "released": ("released", "released", {}),
    "released_random_k": ("released", "released", {"random_keep": True}),
    "union": ("union", "union", {}),
    "union_random_k": ("union", "union", {"random_keep": True}),
    "union_budget25": ("union", "union", {"token_prune_keep_ratio": 0.25}),
    "released_clean_softmax": ("released_clean_softmax", "released_clean_softmax", {}),
    "centred_noisy_softmax": ("centred_noisy_softmax", "centred_noisy_softmax", {}),
    "plan_b": ("plan_b", "plan_b", {}),
    "plan_1": ("plan_1", "plan_1", {}),
    "budget_trained25": ("budget_trained25", "budget_trained25", {}),
    "budget_trained25_random": ("budget_trained25", "budget_trained25", {"random_keep": True}),
    "budget_trained25_at10": ("budget_trained25", "budget_trained25", {"token_prune_keep_ratio": 0.10}),
    "budget_trained10": ("budget_trained10", "budget_trained10", {}),
    "budget_trained10_random": ("budget_trained10", "budget_trained10", {"random_keep": True}),
    "budget_trained25_soft": ("budget_trained25_soft", "budget_trained25_soft", {}),
    "budget_trained25_soft_random": ("budget_trained25_soft", "budget_trained25_soft", {"random_keep": True}),
    "budget_trained25_gated": ("budget_trained25_gated", "budget_trained25_gated", {}),
    "budget_trained25_gated_random": ("budget_trained25_gated", "budget_trained25_gated", {"random_keep": True}),
    "budget_trained25_gated_soft": ("budget_trained25_gated_soft", "budget_trained25_gated_soft", {}),
    "budget_trained25_gated_soft_random": (
        "budget_trained25_gated_soft",
        "budget_trained25_gated_soft",
        {"random_keep": True},
    ),
    "budget_trained25_gated_t05": ("budget_trained25_gated_t05", "budget_trained25_gated_t05", {}),
    "budget_trained25_gated_t05_random": (
        "budget_trained25_gated_t05",
        "budget_trained25_gated_t05",
        {"random_keep": True},
    ),
    "budget_trained25_gated_t1": ("budget_trained25_gated_t1", "budget_trained25_gated_t1", {}),
    "budget_trained25_gated_t1_random": (
        "budget_trained25_gated_t1",
        "budget_trained25_gated_t1",
        {"random_keep": True},
    ),
    "unpruned_no_target": ("unpruned", "union", {"token_prune_keep_ratio": 1.0, "exclude_target": True}),
    "budget_trained25_gated_no_target": ("budget_trained25_gated", "budget_trained25_gated", {"exclude_target": True}),
    "budget_trained25_gated_no_target_random": (
        "budget_trained25_gated",
        "budget_trained25_gated",
        {"exclude_target": True, "random_keep": True},
    ),
    "budget_trained25_gated_finetuned": ("budget_trained25_gated_finetuned", "budget_trained25_gated_finetuned", {}),
    "budget_trained25_gated_finetuned_random": (
        "budget_trained25_gated_finetuned",
        "budget_trained25_gated_finetuned",
        {"random_keep": True},
    ),
    "budget_trained25_gated_finetuned_no_target": (
        "budget_trained25_gated_finetuned",
        "budget_trained25_gated_finetuned",
        {"exclude_target": True},
    ),
    "budget_trained25_gated_finetuned_no_target_far": (
        "budget_trained25_gated_finetuned",
        "budget_trained25_gated_finetuned",
        {"exclude_target": True, "exclude_target_when_far": True},
    ),
    "unpruned_no_target_far": (
        "unpruned",
        "union",
        {"token_prune_keep_ratio": 1.0, "exclude_target": True, "exclude_target_when_far": True},
    ),
    "budget_trained25_gated_finetuned_neighbours": (
        "budget_trained25_gated_finetuned",
        "budget_trained25_gated_finetuned",
        {"token_prune_keep_neighbours": 1},
    ),
    "budget_trained25_gated_finetuned_long": (
        "budget_trained25_gated_finetuned_long",
        "budget_trained25_gated_finetuned_long",
        {},
    ),
    "budget_trained25_gated_finetuned_long_random": (
        "budget_trained25_gated_finetuned_long",
        "budget_trained25_gated_finetuned_long",
        {"random_keep": True},
    ),
    "budget_trained25_gated_finetuned_query_proj": (
        "budget_trained25_gated_finetuned_query_proj",
        "budget_trained25_gated_finetuned_query_proj",
        {},
    ),
    "budget_trained25_gated_finetuned_query_proj_random": (
        "budget_trained25_gated_finetuned_query_proj",
        "budget_trained25_gated_finetuned_query_proj",
        {"random_keep": True},
    ),
    "budget_trained25_gated_finetuned_neighbours_trained": (
        "budget_trained25_gated_finetuned_neighbours_trained",
        "budget_trained25_gated_finetuned_neighbours_trained",
        {},
    ),
    "budget_trained25_gated_finetuned_neighbours_trained_random": (
        "budget_trained25_gated_finetuned_neighbours_trained",
        "budget_trained25_gated_finetuned_neighbours_trained",
        {"random_keep": True},
    ),
    "budget_trained25_gated_finetuned_neighbours_trained_served_plain": (
        "budget_trained25_gated_finetuned_neighbours_trained",
        "budget_trained25_gated_finetuned_neighbours_trained",
        {"token_prune_keep_neighbours": 0},
    ),
    "unpruned_long": ("unpruned_long", "unpruned_long", {}),
    "budget_trained25_gated_finetuned_long_base": (
        "budget_trained25_gated_finetuned_long_base",
        "budget_trained25_gated_finetuned_long_base",
        {},
    ),
    "budget_trained25_gated_finetuned_long_base_random": (
        "budget_trained25_gated_finetuned_long_base",
        "budget_trained25_gated_finetuned_long_base",
        {"random_keep": True},
    ),
    "budget_trained25_gated_finetuned_neighbours_trained_long_base": (
        "budget_trained25_gated_finetuned_neighbours_trained_long_base",
        "budget_trained25_gated_finetuned_neighbours_trained_long_base",
        {},
    ),
    "budget_trained25_gated_finetuned_neighbours_trained_long_base_random": (
        "budget_trained25_gated_finetuned_neighbours_trained_long_base",
        "budget_trained25_gated_finetuned_neighbours_trained_long_base",
        {"random_keep": True},
    ),
}

# (arm, baseline): the paired differences the docs cite, with the training seed as the unit.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("budget_trained25", "unpruned"),
    ("budget_trained25", "budget_trained25_random"),
    ("budget_trained25", "union_budget25"),
    ("budget_trained25", "union"),
    ("budget_trained25_at10", "unpruned"),
    ("budget_trained10", "unpruned"),
    ("budget_trained10", "budget_trained10_random"),
    ("budget_trained10", "budget_trained25_at10"),
    ("budget_trained25_soft", "unpruned"),
    ("budget_trained25_soft", "budget_trained25_soft_random"),
    ("budget_trained25_soft", "budget_trained25"),
    ("budget_trained25_gated", "unpruned"),
    ("budget_trained25_gated", "budget_trained25_gated_random"),
    ("budget_trained25_gated", "budget_trained25"),
    ("budget_trained25_gated_soft", "unpruned"),
    ("budget_trained25_gated_soft", "budget_trained25_gated_soft_random"),
    ("budget_trained25_gated_soft", "budget_trained25_gated"),
    ("budget_trained25_gated_t05", "unpruned"),
    ("budget_trained25_gated_t05", "budget_trained25_gated_t05_random"),
    ("budget_trained25_gated_t05", "budget_trained25_gated"),
    ("budget_trained25_gated_t1", "unpruned"),
    ("budget_trained25_gated_t1", "budget_trained25_gated_t1_random"),
    ("budget_trained25_gated_t1", "budget_trained25_gated"),
    ("budget_trained25_gated_t1", "budget_trained25_gated_t05"),
    ("budget_trained25_gated_finetuned", "unpruned"),
    ("budget_trained25_gated_finetuned", "budget_trained25_gated_finetuned_random"),
    ("budget_trained25_gated_finetuned", "budget25"),
    ("budget_trained25_gated_finetuned", "budget_trained25_gated"),
    ("budget_trained25_gated_finetuned_no_target", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_no_target_far", "budget_trained25_gated_finetuned"),
    ("unpruned_no_target_far", "unpruned"),
    ("budget_trained25_gated_finetuned_neighbours", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_neighbours", "budget_trained25_gated_finetuned_random"),
    ("budget_trained25_gated_finetuned_long", "unpruned"),
    ("budget_trained25_gated_finetuned_long", "budget_trained25_gated_finetuned_long_random"),
    ("budget_trained25_gated_finetuned_long", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_query_proj", "unpruned"),
    ("budget_trained25_gated_finetuned_query_proj", "budget_trained25_gated_finetuned_query_proj_random"),
    ("budget_trained25_gated_finetuned_query_proj", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_neighbours_trained", "unpruned"),
    (
        "budget_trained25_gated_finetuned_neighbours_trained",
        "budget_trained25_gated_finetuned_neighbours_trained_random",
    ),
    ("budget_trained25_gated_finetuned_neighbours_trained", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_neighbours_trained", "budget_trained25_gated_finetuned_neighbours"),
    ("budget_trained25_gated_finetuned_neighbours_trained_served_plain", "budget_trained25_gated_finetuned"),
    ("unpruned_long", "unpruned"),
    ("budget_trained25_gated_finetuned_long_base", "unpruned_long"),
    ("budget_trained25_gated_finetuned_long_base", "budget_trained25_gated_finetuned_long_base_random"),
    ("budget_trained25_gated_finetuned_long_base", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_neighbours_trained_long_base", "unpruned_long"),
    (
        "budget_trained25_gated_finetuned_neighbours_trained_long_base",
        "budget_trained25_gated_finetuned_neighbours_trained_long_base_random",
    ),
    (
        "budget_trained25_gated_finetuned_neighbours_trained_long_base",
        "budget_trained25_gated_finetuned_neighbours_trained",
    ),
    ("unpruned_no_target", "unpruned"),
    ("budget_trained25_gated_no_target", "budget_trained25_gated"),
    ("budget_trained25_gated_no_target", "budget_trained25_gated_no_target_random"),
    ("union", "unpruned"),
    ("union", "union_random_k"),
    ("union_budget25", "unpruned"),
    ("released", "released_random_k"),
    ("released", "union"),
    ("budget25", "random25"),
    ("released_clean_softmax", "released"),
    ("centred_noisy_softmax", "union"),
    ("plan_b", "union"),
    ("plan_1", "union"),
)
# (arm, baseline): the paired differences in episode length the docs cite.
STEP_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("budget_trained25_gated_finetuned", "unpruned"),
    ("budget_trained25_gated_finetuned", "budget_trained25_gated_finetuned_random"),
    ("budget_trained25_gated_finetuned_neighbours", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_long", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_query_proj", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_neighbours_trained", "budget_trained25_gated_finetuned"),
    ("unpruned_long", "unpruned"),
    ("budget_trained25_gated_finetuned_long_base", "unpruned_long"),
    ("budget_trained25_gated_finetuned_long_base", "budget_trained25_gated_finetuned_long_base_random"),
    ("budget_trained25_gated_finetuned_neighbours_trained_long_base", "unpruned_long"),
    ("budget_trained25_gated_finetuned_no_target_far", "budget_trained25_gated_finetuned"),
    ("unpruned_no_target_far", "unpruned"),
)
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond 30 the last one, slightly conservative).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclasses.dataclass
class Args:
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = CORE_TRAINING_ARMS
    """Training arms to run (their evaluation arms follow)."""
    episodes: int = 200
    steps: int | None = None
    """Training steps (default: the config's)."""
    finetune_steps: int = 2000
    """Training steps of an arm that starts from another arm's weights (``budget_trained25_gated_finetuned``; the
    ``_long`` one trains twice as many)."""
    objects: int | None = None
    """Objects per scene (default: the config's 3-4); 1 asks only whether the policy can localise."""
    num_episodes: int | None = None
    """Training scenes (default: the config's)."""
    action_space: ActionSpace | None = None
    """What the actions encode (default: the config's, ``delta``, the step, saturated far from the target);
    ``position``: the point to move to, so every action needs the target's exact position (see ``ShapesTask``)."""
    vision_variant: str | None = None
    """The vision tower of every arm (default: the config's ``tiny_112``, two self-attention layers that mix the
    patches); ``hidden_size=32,num_hidden_layers=0,num_attention_heads=2,intermediate_size=64,image_size=112``: none,
    so each patch token holds only its own pixels (and position) and only the target's tokens show where it is."""
    ema_decay: float | None = None
    """EMA of the weights (evaluated in place of the raw weights); default: the config's (none)."""
    jobs: int = 2
    """Trainings run in parallel, each with cores // jobs threads."""
    report_only: bool = False
    """Rewrite the table and the plot from the results already in ``--results-dir``; train and evaluate nothing."""
    work_dir: Path = REPO / "outputs" / "pruning_closed_loop"
    results_dir: Path = RESULTS / "pruning_closed_loop"
    output: Path = RESULTS / "pruning_closed_loop.md"
    plot: Path = REPO / "docs" / "pruning_closed_loop.png"

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in TRAINING_ARMS]
        if unknown:
            raise ValueError(
                f"Unknown training arms {unknown} (evaluation arms follow their training arm's weights); "
                f"training arms: {', '.join(TRAINING_ARMS)}"
            )
        if self.vision_variant is not None:
            from openpi.models import variants

            variants.get_siglip_config(self.vision_variant)  # a bad variant fails here, before any training


def train_config(arm: str, seed: int, args: Args):
    from openpi.training import config as _config

    name, model_overrides, data_overrides = TRAINING_ARMS[arm]
    config = _config.get_config(name)
    if args.objects is not None:
        data_overrides = {**data_overrides, "min_objects": args.objects, "max_objects": args.objects}
    if args.num_episodes is not None:
        data_overrides = {**data_overrides, "num_episodes": args.num_episodes}
    if args.action_space is not None:
        data_overrides = {**data_overrides, "action_space": args.action_space}
    if args.vision_variant is not None:
        model_overrides = {**model_overrides, "vision_variant": args.vision_variant}
    steps = args.finetune_steps * FINETUNE_MULTIPLES.get(arm, 1) if arm in WARM_STARTS else args.steps
    steps = steps or config.num_train_steps
    return dataclasses.replace(
        config,
        pytorch_weight_path=_warm_start_weights(arm, seed, args),
        exp_name=f"{arm}_seed{seed}",
        seed=seed,
        model=dataclasses.replace(config.model, **model_overrides),
        data=dataclasses.replace(config.data, **data_overrides),
        num_train_steps=steps,
        ema_decay=args.ema_decay if args.ema_decay is not None else config.ema_decay,
        lr_schedule=dataclasses.replace(config.lr_schedule, decay_steps=steps),
        save_interval=min(steps, 500),
        keep_period=None,
        wandb_enabled=False,
        checkpoint_base_dir=str(args.work_dir / "checkpoints"),
        assets_base_dir=str(args.work_dir / "assets"),
        resume=True,  # a training cut off (say, by the end of a session) continues from its last checkpoint
    )


def _warm_start_weights(arm: str, seed: int, args: Args) -> str | None:
    """The final checkpoint of the arm that ``arm`` starts from (same seed), or None for an arm trained from scratch."""
    if arm not in WARM_STARTS:
        return None
    base = train_config(WARM_STARTS[arm], seed, args)
    return str(Path(base.checkpoint_dir) / str(base.num_train_steps))


def _train(arm: str, seed: int, args: Args, threads: int) -> dict[str, Any]:
    """Trains one arm (in a worker process); returns its checkpoint, final loss, wall time and thread count (training
    is not bit-reproducible across thread counts: a retrain with other threads is another policy)."""
    import torch

    from openpi.training import trainer

    torch.set_num_threads(threads)
    config = train_config(arm, seed, args)
    start = time.perf_counter()
    result = trainer.train(config)
    return {
        "checkpoint": str(Path(config.checkpoint_dir) / str(config.num_train_steps)),
        "final_loss": result.history[-1]["loss"],
        "train_minutes": (time.perf_counter() - start) / 60,
        "steps": config.num_train_steps,
        "threads": threads,
    }


def _evaluate(arm: str, seed: int, trained: dict[str, dict], args: Args) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "scripts"))
    import eval_closed_loop

    weights_arm, config_arm, options = EVAL_ARMS[arm]
    config = train_config(config_arm, seed, args)
    controls = options.get("random_keep") or options.get("exclude_target")
    swap = 50 if config.model.token_pruning_enabled and not controls else 0
    eval_args = eval_closed_loop.Args(episodes=args.episodes, seed=seed, prompt_swap=swap, **options)
    eval_args.policy = eval_closed_loop.PolicyArgs(config.name, trained[weights_arm]["checkpoint"])
    summary = eval_closed_loop.evaluate(eval_args, config, eval_closed_loop._in_process(eval_args, config))
    return {**summary, **{f"train_{k}": v for k, v in trained[weights_arm].items() if k != "checkpoint"}}


def main(args: Args) -> None:
    logging.basicConfig(level=logging.WARNING)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        _report(args)
        return
    trained = _train_all(args)
    for seed in args.seeds:
        for arm in _eval_arms(args):
            path = _eval_path(args, arm, seed)
            if not path.is_file():
                result = _evaluate(arm, seed, trained[seed], args)
                path.write_text(json.dumps(result, indent=1))
                print(f"{arm} seed {seed}: success {result['success_rate']:.2f}", flush=True)
    _report(args)


def _train_all(args: Args) -> dict[int, dict[str, dict]]:
    """Trains every (arm, seed) without a result file yet, ``args.jobs`` at a time, each warm-started arm once its
    base is trained; returns all training results."""
    pending = pending_trainings(args)
    threads = max(1, multiprocessing.cpu_count() // args.jobs)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        running: dict[concurrent.futures.Future, tuple[str, int]] = {}
        while pending or running:
            ready = [(arm, seed) for arm, seed in pending if _trained(args, WARM_STARTS.get(arm), seed)]
            for arm, seed in ready[: args.jobs - len(running)]:
                pending.remove((arm, seed))
                running[pool.submit(_train, arm, seed, args, threads)] = (arm, seed)
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                arm, seed = running.pop(future)
                (args.work_dir / f"train_{arm}_seed{seed}.json").write_text(json.dumps(future.result()))
                print(f"trained {arm} seed {seed}: {future.result()}", flush=True)
    return {
        seed: {
            arm: json.loads(path.read_text())
            for arm in args.arms
            if (path := args.work_dir / f"train_{arm}_seed{seed}.json").is_file()
        }
        for seed in args.seeds
    }


def pending_trainings(args: Args) -> list[tuple[str, int]]:
    """The (arm, seed) trainings still needed; a warm start's untrained bases, down its chain, come before it (asked
    for or not)."""
    wanted = [
        (arm, seed)
        for seed in args.seeds
        for arm in args.arms
        if not _trained(args, arm, seed) and _needs_weights(args, arm, seed)
    ]
    bases = [base for arm, seed in wanted for base in _untrained_bases(args, arm, seed)]
    return list(dict.fromkeys([*bases, *wanted]))


def _untrained_bases(args: Args, arm: str, seed: int) -> list[tuple[str, int]]:
    """The untrained arms ``arm`` warm-starts from for ``seed``, directly or not, the first to train first."""
    bases = []
    while (arm := WARM_STARTS.get(arm)) is not None and not _trained(args, arm, seed):
        bases.insert(0, (arm, seed))
    return bases


def _trained(args: Args, arm: str | None, seed: int) -> bool:
    """Whether ``arm`` has finished training for ``seed`` (None, no arm: trivially)."""
    return arm is None or (args.work_dir / f"train_{arm}_seed{seed}.json").is_file()


def _eval_arms(args: Args) -> list[str]:
    return [arm for arm, (weights, _, _) in EVAL_ARMS.items() if weights in args.arms]


def _eval_path(args: Args, arm: str, seed: int) -> Path:
    return args.results_dir / f"{arm}_seed{seed}.json"


def _needs_weights(args: Args, training_arm: str, seed: int) -> bool:
    """Whether an evaluation that uses ``training_arm``'s weights for ``seed`` is still missing."""
    return any(
        EVAL_ARMS[arm][0] == training_arm and not _eval_path(args, arm, seed).is_file() for arm in _eval_arms(args)
    )


def _load(args: Args) -> dict[str, list[dict]]:
    """Each evaluation arm's results in seed order, each with its ``seed``."""
    results: dict[str, list[dict]] = {}
    for arm in EVAL_ARMS:
        paths = {
            int(path.stem.removeprefix(f"{arm}_seed")): path for path in args.results_dir.glob(f"{arm}_seed*.json")
        }
        for seed in sorted(paths):
            results.setdefault(arm, []).append({**json.loads(paths[seed].read_text()), "seed": seed})
    return results


def unpruned_reference(arm: str) -> str:
    """The unpruned policy an arm's weights descend from, the reference of its vision gap: ``unpruned`` unless its
    training warm-starts, directly or through another arm, from a longer-trained one."""
    training = EVAL_ARMS[arm][0] if arm in EVAL_ARMS else arm
    while training not in UNPRUNED_ARMS and training in WARM_STARTS:
        training = WARM_STARTS[training]
    return training if training in UNPRUNED_ARMS else "unpruned"


def _vision_gap_kept(results: dict[str, list[dict]], arm: str) -> str:
    """(arm − blind) / (reference − blind) with the arm's unpruned reference, pooled over the arm's seeds that also
    have both controls (named when that is not all of them); – without such a seed or without a gap."""
    reference = unpruned_reference(arm)
    arm_seeds = {r["seed"] for r in results[arm]}
    seeds = arm_seeds.intersection(*({r["seed"] for r in results.get(name, [])} for name in (reference, "blind")))
    if not seeds:
        return "–"
    rates = {name: _pooled_rate(results[name], seeds) for name in (arm, reference, "blind")}
    gap = rates[reference] - rates["blind"]
    if gap <= 0:
        return "–"
    share = f"{(rates[arm] - rates['blind']) / gap:.2f}"
    return share if seeds == arm_seeds else f"{share} (seeds {', '.join(map(str, sorted(seeds)))})"


def _report(args: Args) -> None:
    from openpi.envs.rollout import wilson_interval

    results = _load(args)
    pooled = {arm: (sum(r["successes"] for r in rs), sum(r["episodes"] for r in rs)) for arm, rs in results.items()}
    rate = {arm: s / n for arm, (s, n) in pooled.items()}
    lines = _header(args, results)
    for arm, runs in results.items():
        successes, episodes = pooled[arm]
        low, high = wilson_interval(successes, episodes)
        per_seed = ", ".join(f"{r['success_rate']:.2f}" for r in runs)
        kept = _mean_of(runs, "kept_tokens_mean")
        ratio = _mean_of(runs, "kept_ratio_mean")
        swaps = [r["prompt_swap"] for r in runs if (r.get("prompt_swap") or {}).get("recall_after_swap") is not None]
        share = "–" if arm == "blind" else _vision_gap_kept(results, arm)
        lines.append(
            f"| {arm} | {len(runs)} | {rate[arm]:.3f} [{low:.3f}, {high:.3f}] | {per_seed} | {share} "
            f"| {_fmt(kept, 1)} | {_fmt(ratio)} | {_fmt(_mean_of(runs, 'target_recall'))} "
            f"| {_fmt(_mean_of(runs, 'target_hit_rate'))} | {_fmt(_mean_of(runs, 'target_hit_rate_final'))} "
            f"| {_swap_recall(swaps)} "
            f"| {_fmt(_mean_of(runs, 'train_train_minutes'), 1)} |"
        )
    lines += [
        "",
        *(_precondition(results, reference) for reference in UNPRUNED_ARMS if reference in results),
        "",
        *_camera_table(results),
        *_comparison_table(results),
        *_steps_table(results),
    ]
    args.output.write_text("\n".join([*lines, ""]))
    _plot(results, pooled, args.plot)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Success of an arm minus a baseline's, per training seed both have, with a t-interval over the seeds."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    low: float
    high: float


def paired_difference(arm: dict[int, float], baseline: dict[int, float]) -> PairedDifference | None:
    """``arm`` − ``baseline`` on their shared seeds (seed -> success rate); None with fewer than two shared seeds."""
    seeds = tuple(sorted(arm.keys() & baseline.keys()))
    if len(seeds) < 2:
        return None
    differences = tuple(arm[s] - baseline[s] for s in seeds)
    mean = statistics.mean(differences)
    half = T_975[min(len(seeds) - 1, len(T_975)) - 1] * statistics.stdev(differences) / math.sqrt(len(seeds))
    return PairedDifference(seeds, differences, mean, mean - half, mean + half)


def _comparison_table(results: dict[str, list[dict]]) -> list[str]:
    """The paired comparisons, seeds as the unit: a difference counts only where its interval excludes 0."""
    lines = [
        "Paired differences in success, seeds as the unit (each seed's arms share their held-out scenes); "
        '95% t-interval over the shared seeds. With three seeds the interval is wide: "not shown" is not "equal".',
        "",
        "| arm − baseline | seeds | per seed | mean [95% t-CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    return lines + _paired_rows(results, COMPARISONS, "success_rate", False, "{:+.2f}")


def _steps_table(results: dict[str, list[dict]]) -> list[str]:
    """The paired comparisons of episode length (a failure counts the step limit), where they are measured."""
    rows = _paired_rows(results, STEP_COMPARISONS, "mean_steps", True, "{:+.1f}")
    if not rows:
        return []
    return [
        "",
        "Paired differences in mean steps per episode (a failure counts the step limit: fewer is faster and more "
        "often successful), seeds as the unit, 95% t-interval.",
        "",
        "| arm − baseline | seeds | per seed | mean [95% t-CI] | verdict |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _paired_rows(
    results: dict[str, list[dict]],
    comparisons: tuple[tuple[str, str], ...],
    metric: str,
    lower_is_better: bool,
    number: str,
) -> list[str]:
    """One row per comparison with two shared seeds; the verdict names the better arm where the interval excludes 0
    ("ahead" in success, "faster" in steps)."""
    lines = []
    for arm, baseline in comparisons:
        values = [{r["seed"]: r[metric] for r in results.get(name, [])} for name in (arm, baseline)]
        diff = paired_difference(*values)
        if diff is None:
            continue
        higher, lower = (arm, baseline) if diff.low > 0 else (baseline, arm) if diff.high < 0 else (None, None)
        better = lower if lower_is_better else higher
        verdict = "not shown" if better is None else f"{better} {'faster' if lower_is_better else 'ahead'}"
        per_seed = ", ".join(number.format(d) for d in diff.differences)
        interval = f"{number.format(diff.mean)} [{number.format(diff.low)}, {number.format(diff.high)}]"
        seeds = ", ".join(map(str, diff.seeds))
        lines.append(f"| {arm} − {baseline} | {seeds} | {per_seed} | {interval} | {verdict} |")
    return lines


def _camera_table(results: dict[str, list[dict]]) -> list[str]:
    """Per arm and seed, where the kept patches lie per camera (the results that carry it; older ones predate it)."""
    rows = [
        f"| {arm} | {r['seed']} | {r['success_rate']:.2f} | {_fmt(r['target_recall'])} "
        f"| {_fmt(r.get('target_pixel_recall'))} | {_fmt(r['kept_share_image'])} "
        f"| {_fmt(r['target_patches_image'], 1)} | {_fmt(r['target_recall_image'])} "
        f"| {_fmt(r['kept_share_wrist_image'])} | {_fmt(r['target_in_view_wrist_image'])} "
        f"| {_fmt(r['target_patches_wrist_image'], 1)} | {_fmt(r['target_recall_wrist_image'])} "
        f"| {_fmt(r.get('target_far_share'))} | {_fmt(r.get('target_hit_rate_near'))} "
        f"| {_fmt(r.get('target_hit_rate_far'))} | {_fmt(r.get('target_recall_far'))} |"
        for arm, runs in results.items()
        for r in runs
        if r.get("kept_share_image") is not None
    ]
    if not rows:
        return []
    return [
        "Per camera (the evaluations run since the breakdown was added): each camera's share of the kept patches, "
        "and over the inferences where the target is in its view the patches it covers there and its recall (the "
        "third-person camera always sees it; the wrist camera only near it, 'in view'). Target recall pools both; "
        "pixel recall is the share of the target's pixels (both cameras) that lie in kept patches, so a patch the "
        "target only grazes counts for what it holds of it (– where a result predates it). "
        "Far: the share of inferences with the target's centre outside the wrist camera's view, where only the "
        "third-person camera shows the way; hit and recall on either side of that line.",
        "",
        "| arm | seed | success | target recall | pixel recall | third-person: kept share | target patches | recall "
        "| wrist: kept share | in view | target patches | recall | far | hit near | hit far | recall far |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _precondition(results: dict[str, list[dict]], reference: str = "unpruned") -> str:
    """The experiment's precondition for the arms on one unpruned policy, pooled over the seeds that have both
    controls and stated with them: without it no comparison against that policy is a finding."""
    name = "" if reference == "unpruned" else f" for the arms on `{reference}`"
    measured = {r["seed"] for r in results.get(reference, [])} & {r["seed"] for r in results.get("blind", [])}
    if not measured:
        return f"**Precondition{name}: not yet measured** (needs the {reference} and blind arms of one seed)."
    unpruned, blind = (_pooled_rate(results[arm], measured) for arm in (reference, "blind"))
    met = unpruned >= 0.8 and unpruned - blind >= 0.3
    verdict = "met" if met else "NOT MET: no comparison in this table is a finding about pruning"
    unmeasured = sorted({r["seed"] for runs in results.values() for r in runs} - measured)
    plural = "s" if len(unmeasured) > 1 else ""
    caveat = f"; not measured on seed{plural} {', '.join(map(str, unmeasured))}" if unmeasured else ""
    failing = _seeds_failing_precondition(results, measured, reference)
    if failing:
        caveat += f"; **not met on seed {', '.join(failing)}**, whose comparisons are not findings"
    return (
        f"**Precondition{name} ({reference} ≥ 0.80 success and ≥ 30 points above blind): {verdict}** "
        f"({reference} {unpruned:.2f}, blind {blind:.2f}, pooled over seeds {', '.join(map(str, sorted(measured)))}"
        f"{caveat})."
    )


def _pooled_rate(runs: list[dict], seeds: set[int]) -> float:
    """Success pooled over the episodes of the given seeds' runs."""
    kept = [r for r in runs if r["seed"] in seeds]
    return sum(r["successes"] for r in kept) / sum(r["episodes"] for r in kept)


def _seeds_failing_precondition(results: dict[str, list[dict]], seeds: set[int], reference: str) -> list[str]:
    """Each measured seed whose own unpruned (reference) and blind policies miss the precondition, with their rates."""
    unpruned = {r["seed"]: r["success_rate"] for r in results[reference]}
    blind = {r["seed"]: r["success_rate"] for r in results["blind"]}
    return [
        f"{seed} ({reference} {unpruned[seed]:.2f}, blind {blind[seed]:.2f})"
        for seed in sorted(seeds)
        if unpruned[seed] < 0.8 or unpruned[seed] - blind[seed] < 0.3
    ]


def _header(args: Args, results: dict[str, list[dict]]) -> list[str]:
    runs = next(iter(results.values()), [{}])
    warm = "".join(
        f"; `{arm}` trains {r.get('train_steps', '?')} more from the final `{WARM_STARTS[arm]}` weights of its seed "
        "(its minutes per seed are those steps')"
        for arm in WARM_STARTS
        for r in results.get(arm, [])[:1]
    )
    return [
        f"# Pruning on the shapes testbed, closed loop ({time.strftime('%Y-%m-%d')}, CPU)",
        "",
        "```",
        "uv run scripts/bench/bench_pruning_closed_loop.py "
        + " ".join(a for a in sys.argv[1:] if a != "--report-only"),
        "```",
        "",
        f"{runs[0].get('episodes', '?')} held-out episodes per seed (scene seeds no training dataset draws from); "
        f"{runs[0].get('train_steps', '?')} training steps per arm{warm}. "
        "Success: pooled over the arm's seeds, Wilson 95% CI (an arm with fewer seeds is not comparable to the "
        "others' pooled rates; compare per seed). "
        "Vision gap kept = (arm − blind) / (unpruned − blind), each pooled over the arm's seeds that have both "
        "controls (in brackets when that is not all of them), where unpruned is the unpruned policy the arm's "
        "weights descend from (`unpruned_long` for the arms fine-tuned from it). "
        "Recall: fraction of the target's patches kept, per inference; hit: at least one kept; last hit: the same at "
        "each episode's last inference (in a success, the one before the close; – where a result predates it). "
        "Swap recall: recall on another object of the scene after the prompt names it (in brackets: before it was "
        "named, what a prompt-blind pruner would keep of it). "
        f"The `*_lightvla` configs' pruner is `{DEFAULT_ARM}`. Latency is not compared here (the evaluations share "
        "the machine with parallel trainings): `scripts/bench/results/pruning.md` measures it in one run.",
        "",
        "| arm | seeds | success [95% CI] | per seed | vision gap kept | kept patches | kept ratio | target recall "
        "| target hit | last hit | swap recall | train min/seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]


def _swap_recall(swaps: list[dict]) -> str:
    """The prompt-swap recall, with the same object's recall before it was named where measured."""
    if not swaps:
        return "–"
    after = _fmt(_mean_of(swaps, "recall_after_swap"))
    before = _mean_of(swaps, "recall_other_before_swap")
    return after if before is None else f"{after} ({_fmt(before)})"


def _mean_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.mean(values) if values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


_JITTER = 0.003  # the plot's horizontal offset between consecutive arms


_MARKERS = ("o", "s", "^", "D")


def _plot(results: dict[str, list[dict]], pooled: dict[str, tuple[int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openpi.envs.rollout import wilson_interval

    fig, ax = plt.subplots(figsize=(9, 5))
    for index, (arm, runs) in enumerate(results.items()):
        successes, episodes = pooled[arm]
        rate = successes / episodes
        low, high = wilson_interval(successes, episodes)
        ratio = _mean_of(runs, "kept_ratio_mean")
        x = 1.0 if ratio is None or arm in (*UNPRUNED_ARMS, "blind") else ratio
        x = (0.0 if arm == "blind" else x) + _JITTER * (index - len(results) / 2)  # spread arms at the same ratio
        color = plt.cm.tab20(index % 20)
        marker = _MARKERS[index // 20 % len(_MARKERS)]  # a colour repeats only with another marker
        label = f"{arm} ({len(runs)})"
        ax.errorbar(
            x,
            rate,
            yerr=[[max(0.0, rate - low)], [max(0.0, high - rate)]],
            fmt=marker,
            capsize=4,
            color=color,
            label=label,
        )
        successes_per_seed = [r["success_rate"] for r in runs]
        ax.scatter([x] * len(runs), successes_per_seed, s=14, marker=marker, facecolors="none", edgecolors=color)
    ax.set_xlabel(f"kept patch ratio (blind = 0, unpruned = 1; arms offset by up to ±{_JITTER * len(results) / 2:.2f})")
    ax.set_ylabel("closed-loop success on held-out scenes")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    ax.set_title("Success vs kept patches: pooled seeds, Wilson 95% CI; rings: single seeds", fontsize=10)
    ax.legend(title="arm (seeds)", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend sits outside the axes


if __name__ == "__main__":
    main(tyro.cli(Args))

"""The arms of the closed-loop pruning experiment, as data: what each trains, what each evaluates, what is compared.

A training arm is a config of the package (``pi05_shapes`` or ``pi05_shapes_lightvla``) with some of its model and
data fields replaced; an evaluation arm serves one training arm's final weights, built as some training arm's config,
with the options of :class:`openpi.evaluation.closed_loop.Args` (a serving budget, ``random_keep``) and, for the
controls of what target recall measures, the target's patches withheld from the pruner
(:mod:`research.lightvla.withholding`). Every override names a ``token_prune_*`` field the package still has; the arms
of the removed ablations live at commit ``af70938`` (research/lightvla/README.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

# LightVLA's own selection: every noisy argmax in training, their union at inference. The *_lightvla configs train
# on a budget instead, so the arms that study the union pin it.
UNION = {
    "token_prune_budget_training": False,
    "token_prune_keep_ratio": None,
    "token_prune_gate_dropped_patches": False,
}
# Budget training with the gate on the kept patches only.
BUDGET = {"token_prune_budget_training": True, "token_prune_gate_dropped_patches": False}
# Gated budget training at 25%: the *_lightvla configs' pruner (openpi.training.config.LIGHTVLA_PRUNING).
GATED25 = {**BUDGET, "token_prune_keep_ratio": 0.25, "token_prune_gate_dropped_patches": True}

Withhold = Literal["always", "far"] | None


@dataclasses.dataclass(frozen=True)
class TrainingArm:
    """A policy trained per seed with the package's trainer."""

    config: str
    """The training config it starts from."""
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``Pi0Config`` fields replaced."""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Data config fields replaced."""
    warm_start: str | None = None
    """The training arm whose final weights of the same seed it starts from, training ``--finetune-steps`` (times
    ``finetune_multiple``) more; None: trained from scratch for ``--steps``. The pruner has no parameters, so
    unpruned weights load into a pruned model as they are."""
    finetune_multiple: int = 1


@dataclasses.dataclass(frozen=True)
class EvalArm:
    """One closed-loop evaluation per seed on the held-out scenes."""

    weights: str
    """The training arm whose final weights it serves."""
    config: str
    """The training arm whose config builds the policy (its pruner settings)."""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of ``openpi.evaluation.closed_loop.Args``: a serving budget, ``random_keep``."""
    withhold_target: Withhold = None
    """Withhold the named target's patches from the pruner at every inference (``always``) or only while the target
    is outside the wrist camera's view (``far``); the budget is filled from the other patches."""


TRAINING_ARMS: dict[str, TrainingArm] = {
    # Cameras masked in training and evaluation: what the prompt and state alone achieve.
    "blind": TrainingArm("pi05_shapes", data={"mask_images": True}),
    "unpruned": TrainingArm("pi05_shapes"),
    # LightVLA's union of the votes, with centred scoring.
    "union": TrainingArm("pi05_shapes_lightvla", UNION),
    # Trained on the budget it is served with, the gate on the kept patches only.
    "budget_trained25": TrainingArm("pi05_shapes_lightvla", {**BUDGET, "token_prune_keep_ratio": 0.25}),
    "budget_trained10": TrainingArm("pi05_shapes_lightvla", {**BUDGET, "token_prune_keep_ratio": 0.10}),
    # The *_lightvla default: the dropped patches kept in training at a negligible weight, so the gate reaches them.
    "budget_trained25_gated": TrainingArm("pi05_shapes_lightvla", GATED25),
    # The default fine-tuned on a policy that already sees, as users fine-tune the π0.5 base.
    "budget_trained25_gated_finetuned": TrainingArm("pi05_shapes_lightvla", GATED25, warm_start="unpruned"),
    # The same, twice as long.
    "budget_trained25_gated_finetuned_long": TrainingArm(
        "pi05_shapes_lightvla", GATED25, warm_start="unpruned", finetune_multiple=2
    ),
    # A stronger base: the unpruned policy trained further from its own final weights (a fresh warm-up and cosine).
    "unpruned_long": TrainingArm("pi05_shapes", warm_start="unpruned", finetune_multiple=2),
    # The default fine-tuned from that stronger base.
    "budget_trained25_gated_finetuned_long_base": TrainingArm(
        "pi05_shapes_lightvla", GATED25, warm_start="unpruned_long"
    ),
    # The mixing-tower testbed: the registered configs as they are, the pruners fine-tuned from the seed's `unpruned`.
    "default": TrainingArm("pi05_shapes_lightvla", warm_start="unpruned"),
    # The default with a quarter of the dropped patches gated per step (a shorter training prefix).
    "default_sampled": TrainingArm(
        "pi05_shapes_lightvla", {"token_prune_gate_dropped_sample": 0.25}, warm_start="unpruned"
    ),
    # LightVLA's union selection, fine-tuned the same way.
    "union_finetuned": TrainingArm("pi05_shapes_lightvla", UNION, warm_start="unpruned"),
}

# The policies trained without pruning: each arm's vision gap is measured against the one its weights descend from.
UNPRUNED_ARMS = ("unpruned", "unpruned_long")
DEFAULT_ARM = "budget_trained25_gated"  # what pi05_shapes_lightvla trains (a test holds them equal)
CORE_TRAINING_ARMS = ("blind", "unpruned", "union", DEFAULT_ARM)
# The full protocol on the mixing-tower testbed (research/lightvla/README.md, "Mixing-tower testbed").
TESTBED_TRAINING_ARMS = ("blind", "unpruned", "default", "default_sampled", "union_finetuned")
RANDOM = {"random_keep": True}
# The serving budgets of the testbed's protocol: kept share -> the suffix of its evaluation arms.
BUDGETS = {0.25: "", 0.10: "_at10", 0.05: "_at5"}


def _on(arm: str, **kwargs: Any) -> EvalArm:
    """An evaluation of ``arm``'s weights as ``arm``'s config."""
    return EvalArm(arm, arm, **kwargs)


EVAL_ARMS: dict[str, EvalArm] = {
    "blind": _on("blind"),
    "unpruned": _on("unpruned"),
    # Training-free budgets: the pruner's scoring, untrained, on the unpruned weights; and as many random patches.
    "budget25": EvalArm("unpruned", "union", {"token_prune_keep_ratio": 0.25}),
    "budget10": EvalArm("unpruned", "union", {"token_prune_keep_ratio": 0.10}),
    "random25": EvalArm("unpruned", "union", {"token_prune_keep_ratio": 0.25, **RANDOM}),
    "union": _on("union"),
    "union_random_k": _on("union", options=RANDOM),
    "union_budget25": _on("union", options={"token_prune_keep_ratio": 0.25}),
    "budget_trained25": _on("budget_trained25"),
    "budget_trained25_random": _on("budget_trained25", options=RANDOM),
    "budget_trained25_at10": _on("budget_trained25", options={"token_prune_keep_ratio": 0.10}),
    "budget_trained10": _on("budget_trained10"),
    "budget_trained10_random": _on("budget_trained10", options=RANDOM),
    "budget_trained25_gated": _on("budget_trained25_gated"),
    "budget_trained25_gated_random": _on("budget_trained25_gated", options=RANDOM),
    # What target recall measures: every patch but the target's, and the default's budget filled without them.
    "unpruned_no_target": EvalArm("unpruned", "union", {"token_prune_keep_ratio": 1.0}, "always"),
    "budget_trained25_gated_no_target": _on("budget_trained25_gated", withhold_target="always"),
    "budget_trained25_gated_no_target_random": _on("budget_trained25_gated", options=RANDOM, withhold_target="always"),
    "budget_trained25_gated_finetuned": _on("budget_trained25_gated_finetuned"),
    "budget_trained25_gated_finetuned_random": _on("budget_trained25_gated_finetuned", options=RANDOM),
    "budget_trained25_gated_finetuned_no_target": _on("budget_trained25_gated_finetuned", withhold_target="always"),
    # The target's patches withheld only while it is far: does the policy need them there?
    "budget_trained25_gated_finetuned_no_target_far": _on("budget_trained25_gated_finetuned", withhold_target="far"),
    "unpruned_no_target_far": EvalArm("unpruned", "union", {"token_prune_keep_ratio": 1.0}, "far"),
    "budget_trained25_gated_finetuned_long": _on("budget_trained25_gated_finetuned_long"),
    "budget_trained25_gated_finetuned_long_random": _on("budget_trained25_gated_finetuned_long", options=RANDOM),
    "unpruned_long": _on("unpruned_long"),
    "budget_trained25_gated_finetuned_long_base": _on("budget_trained25_gated_finetuned_long_base"),
    "budget_trained25_gated_finetuned_long_base_random": _on(
        "budget_trained25_gated_finetuned_long_base", options=RANDOM
    ),
    "budget5": EvalArm("unpruned", "union", {"token_prune_keep_ratio": 0.05}),
    "random10": EvalArm("unpruned", "union", {"token_prune_keep_ratio": 0.10, **RANDOM}),
    "random5": EvalArm("unpruned", "union", {"token_prune_keep_ratio": 0.05, **RANDOM}),
    **{
        f"{arm}{suffix}{control}": _on(arm, options={"token_prune_keep_ratio": share, **options})
        for share, suffix in BUDGETS.items()
        for arm in ("default", "default_sampled")
        for control, options in (("", {}), ("_random", RANDOM))
    },
    "union_finetuned": _on("union_finetuned"),
    "union_finetuned_random": _on("union_finetuned", options=RANDOM),
}

# (arm, baseline): the paired differences in success the results tables report, the training seed as the unit.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("budget_trained25", "unpruned"),
    ("budget_trained25", "budget_trained25_random"),
    ("budget_trained25", "union_budget25"),
    ("budget_trained25", "union"),
    ("budget_trained25_at10", "unpruned"),
    ("budget_trained10", "unpruned"),
    ("budget_trained10", "budget_trained10_random"),
    ("budget_trained10", "budget_trained25_at10"),
    ("budget_trained25_gated", "unpruned"),
    ("budget_trained25_gated", "budget_trained25_gated_random"),
    ("budget_trained25_gated", "budget_trained25"),
    ("budget_trained25_gated_finetuned", "unpruned"),
    ("budget_trained25_gated_finetuned", "budget_trained25_gated_finetuned_random"),
    ("budget_trained25_gated_finetuned", "budget25"),
    ("budget_trained25_gated_finetuned", "budget_trained25_gated"),
    ("budget_trained25_gated_finetuned_no_target", "budget_trained25_gated_finetuned"),
    ("budget_trained25_gated_finetuned_no_target_far", "budget_trained25_gated_finetuned"),
    ("unpruned_no_target_far", "unpruned"),
    ("budget_trained25_gated_finetuned_long", "unpruned"),
    ("budget_trained25_gated_finetuned_long", "budget_trained25_gated_finetuned_long_random"),
    ("budget_trained25_gated_finetuned_long", "budget_trained25_gated_finetuned"),
    ("unpruned_long", "unpruned"),
    ("budget_trained25_gated_finetuned_long_base", "unpruned_long"),
    ("budget_trained25_gated_finetuned_long_base", "budget_trained25_gated_finetuned_long_base_random"),
    ("budget_trained25_gated_finetuned_long_base", "budget_trained25_gated_finetuned"),
    ("unpruned_no_target", "unpruned"),
    ("budget_trained25_gated_no_target", "budget_trained25_gated"),
    ("budget_trained25_gated_no_target", "budget_trained25_gated_no_target_random"),
    ("union", "unpruned"),
    ("union", "union_random_k"),
    ("union_budget25", "unpruned"),
    ("budget25", "random25"),
    *(
        pair
        for share, suffix in BUDGETS.items()
        for pair in (
            (f"default{suffix}", "unpruned"),
            (f"default{suffix}", f"default{suffix}_random"),
            (f"default{suffix}", f"budget{round(share * 100)}"),
            (f"default_sampled{suffix}", f"default{suffix}"),
            (f"default_sampled{suffix}", f"default_sampled{suffix}_random"),
        )
    ),
    ("union_finetuned", "unpruned"),
    ("union_finetuned", "union_finetuned_random"),
    ("union_finetuned", "default_at5"),
    ("unpruned", "blind"),
)
# (arm, baseline): the paired differences in episode length the results tables report.
STEP_COMPARISONS: tuple[tuple[str, str], ...] = (
    *((f"default{suffix}", f"default{suffix}_random") for suffix in BUDGETS.values()),
    ("budget_trained25_gated_finetuned", "unpruned"),
    ("budget_trained25_gated_finetuned", "budget_trained25_gated_finetuned_random"),
    ("budget_trained25_gated_finetuned_long", "budget_trained25_gated_finetuned"),
    ("unpruned_long", "unpruned"),
    ("budget_trained25_gated_finetuned_long_base", "unpruned_long"),
    ("budget_trained25_gated_finetuned_long_base", "budget_trained25_gated_finetuned_long_base_random"),
    ("budget_trained25_gated_finetuned_no_target_far", "budget_trained25_gated_finetuned"),
    ("unpruned_no_target_far", "unpruned"),
)


def unpruned_reference(arm: str) -> str:
    """The unpruned policy an arm's weights descend from, the reference of its vision gap: ``unpruned`` unless its
    training warm-starts, directly or through another arm, from a longer-trained one."""
    training = EVAL_ARMS[arm].weights if arm in EVAL_ARMS else arm
    while training not in UNPRUNED_ARMS and training in TRAINING_ARMS and TRAINING_ARMS[training].warm_start:
        training = TRAINING_ARMS[training].warm_start
    return training if training in UNPRUNED_ARMS else "unpruned"

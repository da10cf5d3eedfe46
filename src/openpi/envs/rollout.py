"""Closed-loop evaluation on the shapes scene: episodes, success with a confidence interval, and target recall.

The policy is anything with ``infer(observation) -> {"actions": [H, 7], ...}``: an in-process
:class:`~openpi.policies.policy.Policy` or a websocket client. When its outputs carry ``kept_patch_mask`` (a pruning
policy with ``return_kept_patches``), every inference is also scored against the scene's object masks: which
fraction of the target's patches was kept (target recall), which fraction of its pixels lies in kept patches (pixel
recall: a patch the target only grazes weighs what it holds of it), which fraction of the kept patches lies on any
object, and whether at least one target patch was kept; and per camera, where the kept patches lie and how much of
the target they hold where it is in view.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from openpi.envs.chunk_execution import ChunkExecutor, Execution, RTCChoice, Smoothness
from openpi.envs.shapes import WRIST_FIELD_OF_VIEW, Scene, ShapesEnv

# An inference is "near" when the target's centre lies inside the wrist camera's view (half its field of view from the
# effector on both axes), "far" otherwise: then only the third-person camera shows where to go.
NEAR_DISTANCE = WRIST_FIELD_OF_VIEW / 2
# Training scenes come from np.random.default_rng(dataset seed) streams; evaluation scenes from these seeds on.
HELD_OUT_SEED_BASE = 1_000_000_000


class Policy(Protocol):
    def infer(self, obs: dict) -> dict: ...


@dataclasses.dataclass(frozen=True)
class PatchGrid:
    """How the model sees the env's cameras: square images of ``image_size`` px cut into ``patch_size`` patches,
    the env cameras ``cameras`` in the model's camera-slot order, ``num_slots`` slots pooled camera-major."""

    image_size: int
    patch_size: int
    cameras: tuple[str, ...] = ("image", "wrist_image")
    num_slots: int = 3

    @property
    def patches_per_slot(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def object_patches(self, masks: dict[str, np.ndarray]) -> np.ndarray:
        """``[num_objects, num_slots * patches_per_slot]`` bool: the pooled patches covering any pixel of each object
        (``masks``: camera -> ``[num_objects, S, S]`` pixel masks at the env's resolution)."""
        return self.object_coverage(masks) > 0

    def object_coverage(self, masks: dict[str, np.ndarray]) -> np.ndarray:
        """``[num_objects, num_slots * patches_per_slot]`` float: the fraction of each pooled patch's pixels that each
        object covers (0 for the slots of no camera)."""
        side = self.image_size // self.patch_size
        num_objects = next(iter(masks.values())).shape[0]
        out = np.zeros((num_objects, self.num_slots, side * side))
        for slot, camera in enumerate(self.cameras):
            for index, mask in enumerate(masks[camera]):
                resized = np.asarray(
                    Image.fromarray(mask.astype(np.uint8) * 255).resize(
                        (self.image_size, self.image_size), resample=Image.Resampling.NEAREST
                    )
                )
                pixels = resized[: side * self.patch_size, : side * self.patch_size] > 0
                blocks = pixels.reshape(side, self.patch_size, side, self.patch_size).mean(axis=(1, 3))
                out[index, slot] = blocks.reshape(-1)
        return out.reshape(num_objects, -1)


@dataclasses.dataclass(frozen=True)
class CameraScore:
    """One camera's part of a kept set at one inference."""

    camera: str
    kept: int  # kept patches of this camera
    target_patches: int  # patches of this camera covering the target (0: the target is out of its view)
    target_kept: int  # of those, kept


@dataclasses.dataclass(frozen=True)
class KeptPatchScore:
    """How a kept set relates to the scene's objects at one inference."""

    target_recall: float  # kept target patches / target patches
    target_pixel_recall: float  # the target's pixels in kept patches / the target's pixels
    on_object: float  # kept patches on any object / kept patches
    target_hit: bool  # at least one target patch kept
    kept: int
    by_camera: tuple[CameraScore, ...] = ()  # per camera of the grid, when scored with one
    target_offset: float | None = None  # the effector's Chebyshev distance to the target's centre, when known


def score_kept_patches(
    kept: np.ndarray, objects: np.ndarray, target: int, grid: PatchGrid | None = None
) -> KeptPatchScore:
    """Scores ``kept`` (``[N]`` bool) against ``objects`` for object ``target``; with ``grid``, also per camera (the
    pooled patches are camera-major, ``grid.patches_per_slot`` per slot).

    ``objects``: ``[num_objects, N]``, each object's coverage of each patch (:meth:`PatchGrid.object_coverage`, the
    fraction of its pixels) or bool (:meth:`PatchGrid.object_patches`, where the pixel recall is the patch recall).
    A patch belongs to an object when the object covers any of its pixels."""
    kept = np.asarray(kept, dtype=bool)
    coverage = np.asarray(objects, dtype=np.float64)
    target_patches = coverage[target] > 0
    hits = int((kept & target_patches).sum())
    on_object = int((kept & (coverage > 0).any(axis=0)).sum())
    target_pixels = coverage[target].sum()
    return KeptPatchScore(
        target_recall=hits / max(1, int(target_patches.sum())),
        target_pixel_recall=float(coverage[target][kept].sum() / target_pixels) if target_pixels > 0 else 0.0,
        on_object=on_object / max(1, int(kept.sum())),
        target_hit=hits > 0,
        kept=int(kept.sum()),
        by_camera=() if grid is None else _score_cameras(kept, target_patches, grid),
    )


def _score_cameras(kept: np.ndarray, target_patches: np.ndarray, grid: PatchGrid) -> tuple[CameraScore, ...]:
    per_slot = grid.patches_per_slot
    scores = []
    for slot, camera in enumerate(grid.cameras):
        window = slice(slot * per_slot, (slot + 1) * per_slot)
        kept_here, target_here = kept[window], target_patches[window]
        scores.append(
            CameraScore(camera, int(kept_here.sum()), int(target_here.sum()), int((kept_here & target_here).sum()))
        )
    return tuple(scores)


@dataclasses.dataclass
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    infer_ms: list[float] = dataclasses.field(default_factory=list)
    kept_patches: list[KeptPatchScore] = dataclasses.field(default_factory=list)
    kept_ratio: list[float] = dataclasses.field(default_factory=list)
    smoothness: Smoothness = dataclasses.field(default_factory=Smoothness)
    control_steps: int = 0  # control periods until the end, the robot's waits for inference included


@dataclasses.dataclass(frozen=True)
class Latency:
    """How chunks are executed under a simulated inference delay of ``inference_delay`` control steps: ``sync``, the
    robot waits for each chunk; ``async``, it keeps executing the current chunk meanwhile, and with ``rtc`` the
    request continues it (:mod:`openpi.envs.chunk_execution`)."""

    inference_delay: int = 0
    execution: Execution = "sync"
    rtc: RTCChoice = "none"

    def __post_init__(self) -> None:
        if self.inference_delay < 0:
            raise ValueError(f"inference_delay must be >= 0 control steps, got {self.inference_delay}")
        if self.rtc != "none" and self.execution != "async":
            raise ValueError("Real-time chunking continues a chunk that runs during inference: it needs async")


def run_episode(
    env: ShapesEnv,
    policy: Policy,
    seed: int,
    *,
    replan_steps: int,
    grid: PatchGrid | None = None,
    swap_target: bool = False,
    latency: Latency = Latency(),
) -> EpisodeResult:
    """Runs one episode from ``seed``: a chunk is asked for every ``replan_steps`` executed actions and arrives
    ``latency.inference_delay`` control steps later (computed at once from the observation it was asked with); the
    robot waits meanwhile (sync) or runs the current chunk on (async; it waits only when the chunk runs out).
    Without delay: infer, execute the first ``replan_steps`` actions, repeat. ``swap_target``: the same scene with
    the next object named (the prompt swap's episode)."""
    observation = env.reset(seed)
    if swap_target and len(env.scene.objects) > 1:
        env.set_scene(Scene(env.scene.objects, _other_object(env.scene)))
        observation = env.observation()
    result = EpisodeResult(seed=seed, success=False, steps=0)
    executor = ChunkExecutor(replan_steps, latency.rtc)
    pending: tuple[np.ndarray, int, int] | None = None  # actions, executed count at the request, arrival step
    clock = executed = 0
    while True:
        if pending is None and executor.due:
            output = policy.infer({**observation, **executor.request_fields(latency.inference_delay)})
            _record_inference(result, output, env, grid)
            pending = (np.asarray(output["actions"]), executed, clock + latency.inference_delay)
        if pending is not None and pending[2] <= clock:
            executor.receive(pending[0], executed - pending[1])
            pending = None
            continue  # a chunk arriving with no delay may be due at once (replan_steps past its start)
        clock += 1
        if not executor.has_action or (pending is not None and latency.execution == "sync"):
            continue  # the robot waits for the next chunk
        action, switched = executor.next_action()
        result.smoothness.record(action, switched)
        step = env.step(action)
        observation, executed = step.observation, executed + 1
        if step.done:
            result.success, result.steps, result.control_steps = step.success, env.steps, clock
            return result


def _record_inference(result: EpisodeResult, output: dict, env: ShapesEnv, grid: PatchGrid | None) -> None:
    timing = output.get("policy_timing", {})
    if "infer_ms" in timing:
        result.infer_ms.append(float(timing["infer_ms"]))
    pruning = output.get("token_pruning", {})
    if "kept_ratio_overall_mean" in pruning:
        result.kept_ratio.append(float(pruning["kept_ratio_overall_mean"]))
    if grid is not None and "kept_patch_mask" in output:
        objects = grid.object_coverage(env.masks())
        score = score_kept_patches(output["kept_patch_mask"], objects, env.scene.target, grid)
        result.kept_patches.append(dataclasses.replace(score, target_offset=target_offset(env)))


def target_offset(env: ShapesEnv) -> float:
    """The target's centre's distance from the effector, the larger of the two axes (``NEAR_DISTANCE`` splits it)."""
    return float(np.abs(np.asarray(env.scene.objects[env.scene.target].center) - env.effector).max())


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """The evaluation's summary: success rate with its Wilson 95% interval, steps, kept patches, recall (over every
    inference; ``*_final`` over each episode's last one, whose chunk ends it: in a success, the close), latency, and
    per camera (:func:`camera_summary`) and by the target's distance (:func:`distance_summary`)."""
    successes = sum(r.success for r in results)
    scores = [s for r in results for s in r.kept_patches]
    finals = [r.kept_patches[-1] for r in results if r.kept_patches]
    infer_ms = [ms for r in results for ms in r.infer_ms]
    ratios = [x for r in results for x in r.kept_ratio]
    wins = [r for r in results if r.success]
    return {
        "success_rate": successes / max(1, len(results)),
        "successes": successes,
        "ci95": list(wilson_interval(successes, len(results))),
        "episodes": len(results),
        "mean_steps": _mean(r.steps for r in results),
        "mean_control_steps": _mean(r.control_steps for r in results),
        "control_steps_to_success": _mean(r.control_steps for r in wins),
        "boundary_discontinuity": _mean(x for r in results for x in r.smoothness.boundary),
        "within_chunk_discontinuity": _mean(x for r in results for x in r.smoothness.within),
        "kept_tokens_mean": _mean(s.kept for s in scores),
        "kept_ratio_mean": _mean(ratios),
        "target_recall": _mean(s.target_recall for s in scores),
        "target_pixel_recall": _mean(s.target_pixel_recall for s in scores),
        "target_hit_rate": _mean(float(s.target_hit) for s in scores),
        "kept_on_object": _mean(s.on_object for s in scores),
        "target_recall_final": _mean(s.target_recall for s in finals),
        "target_hit_rate_final": _mean(float(s.target_hit) for s in finals),
        "infer_ms_p50": statistics.median(infer_ms) if infer_ms else None,
        **camera_summary(scores),
        **distance_summary(scores),
    }


def distance_summary(scores: Sequence[KeptPatchScore]) -> dict[str, float | None]:
    """``target_far_share`` (the share of scored inferences with the target outside the wrist camera's view), and
    ``target_recall_{near,far}`` / ``target_hit_rate_{near,far}`` over the inferences on either side of
    :data:`NEAR_DISTANCE`: does the kept set find the target while the policy still has to get there?"""
    known = [s for s in scores if s.target_offset is not None]
    if not known:
        return {}
    summary: dict[str, float | None] = {
        "target_far_share": sum(s.target_offset >= NEAR_DISTANCE for s in known) / len(known)
    }
    for side, part in (
        ("near", [s for s in known if s.target_offset < NEAR_DISTANCE]),
        ("far", [s for s in known if s.target_offset >= NEAR_DISTANCE]),
    ):
        summary[f"target_recall_{side}"] = _mean(s.target_recall for s in part)
        summary[f"target_hit_rate_{side}"] = _mean(float(s.target_hit) for s in part)
    return summary


def camera_summary(scores: Sequence[KeptPatchScore]) -> dict[str, float | None]:
    """Per camera ``c`` of the scored inferences: ``kept_share_{c}`` (its share of the kept patches),
    ``target_in_view_{c}`` (the share of inferences whose target covers a patch of it), and over the inferences where
    the target is in its view ``target_patches_{c}`` (how many of its patches the target covers) and
    ``target_recall_{c}`` (kept target patches / target patches in it)."""
    cameras = dict.fromkeys(c.camera for s in scores for c in s.by_camera)
    summary: dict[str, float | None] = {}
    for camera in cameras:
        parts = [(s, c) for s in scores for c in s.by_camera if c.camera == camera]
        in_view = [c for _, c in parts if c.target_patches > 0]
        summary[f"kept_share_{camera}"] = _mean(c.kept / max(1, s.kept) for s, c in parts)
        summary[f"target_in_view_{camera}"] = len(in_view) / len(parts)
        summary[f"target_patches_{camera}"] = _mean(c.target_patches for c in in_view)
        summary[f"target_recall_{camera}"] = _mean(c.target_kept / c.target_patches for c in in_view)
    return summary


def prompt_swap(env: ShapesEnv, policy: Policy, seeds: Iterable[int], grid: PatchGrid) -> dict[str, float | None]:
    """Same scene, the prompt naming another object: does the kept set follow the prompt?

    For each seed, scores the first observation's kept set against the named target, then names the next object
    instead and scores the new kept set against that object (scenes with a single object are skipped). Returns the
    mean recalls, the recall of the newly named object before it was named (the control: what a prompt-blind pruner
    keeps of it), and the mean fraction of the kept set that changed (Jaccard distance).
    """
    original, unnamed, swapped, changed = [], [], [], []
    for seed in seeds:
        observation = env.reset(seed)
        scene = env.scene
        if len(scene.objects) < 2:  # nothing else to name
            continue
        before = np.asarray(policy.infer(observation)["kept_patch_mask"], dtype=bool)
        objects = grid.object_patches(env.masks())
        original.append(score_kept_patches(before, objects, scene.target).target_recall)
        other = _other_object(scene)
        unnamed.append(score_kept_patches(before, objects, other).target_recall)
        env.set_scene(Scene(scene.objects, other))
        after = np.asarray(policy.infer(env.observation())["kept_patch_mask"], dtype=bool)
        swapped.append(score_kept_patches(after, objects, other).target_recall)
        changed.append(1.0 - (before & after).sum() / max(1, (before | after).sum()))
    return {
        "recall_named_target": _mean(original),
        "recall_other_before_swap": _mean(unnamed),
        "recall_after_swap": _mean(swapped),
        "kept_set_changed": _mean(changed),
    }


def swapped_episodes(
    env: ShapesEnv, policy: Policy, seeds: Iterable[int], *, replan_steps: int, grid: PatchGrid
) -> dict[str, float | None]:
    """Whole episodes of the prompt swap: each scene with the object :func:`prompt_swap` names instead of its target
    (scenes with a single object skipped). Returns the success on the newly named object and its recall over every
    inference."""
    results = [
        run_episode(env, policy, seed, replan_steps=replan_steps, grid=grid, swap_target=True)
        for seed in seeds
        if _num_objects(env, seed) > 1
    ]
    scores = [s for r in results for s in r.kept_patches]
    return {
        "success_after_swap": _mean(float(r.success) for r in results),
        "episode_recall_after_swap": _mean(s.target_recall for s in scores),
    }


def _num_objects(env: ShapesEnv, seed: int) -> int:
    env.reset(seed)
    return len(env.scene.objects)


def _other_object(scene: Scene) -> int:
    """The object a prompt swap names instead of the target: the next one."""
    return (scene.target + 1) % len(scene.objects)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None

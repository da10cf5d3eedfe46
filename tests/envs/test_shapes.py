"""The shapes environment, its expert, and the target-recall measurement of the pruning testbed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from openpi.envs import rollout
from openpi.envs.shapes import (
    COLORS,
    GRASP_RADIUS,
    MAX_STEP,
    Scene,
    SceneObject,
    ShapesEnv,
    ShapesTask,
    expert_action,
    sample_scene,
)

GRID = rollout.PatchGrid(image_size=112, patch_size=14)


class ExpertPolicy:
    """Infers the env's own expert action, repeated as a chunk."""

    def __init__(self, env: ShapesEnv, horizon: int = 4) -> None:
        self.env, self.horizon = env, horizon

    def infer(self, obs: dict) -> dict:
        return {"actions": np.stack([self.env.expert_action()] * self.horizon)}


@pytest.mark.parametrize(
    "task",
    [
        ShapesTask(),
        ShapesTask(min_objects=4, max_objects=5, shared_attributes=True),
        ShapesTask(action_space="position"),
    ],
)
def test_the_expert_solves_its_own_scenes(task):
    env = ShapesEnv(task)
    results = [rollout.run_episode(env, ExpertPolicy(env), seed, replan_steps=1) for seed in range(40)]
    assert all(r.success for r in results)
    assert max(r.steps for r in results) < task.max_steps


def _expert_path(task: ShapesTask, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The effector's positions and the expert's actions over one episode of the expert."""
    env = ShapesEnv(task)
    env.reset(seed)
    positions, actions = [env.effector.copy()], []
    for _ in range(task.max_steps):
        actions.append(env.expert_action())
        step = env.step(actions[-1])
        positions.append(env.effector.copy())
        if step.done:
            break
    return np.stack(positions), np.stack(actions)


@pytest.mark.parametrize("seed", range(5))
def test_position_actions_move_the_effector_as_delta_actions_do_and_name_the_target(seed):
    delta_path, delta_actions = _expert_path(ShapesTask(min_objects=1, max_objects=1), seed)
    position_path, position_actions = _expert_path(
        ShapesTask(min_objects=1, max_objects=1, action_space="position"), seed
    )
    np.testing.assert_allclose(position_path, delta_path, atol=1e-9)  # only what the action encodes differs
    env = ShapesEnv(ShapesTask(min_objects=1, max_objects=1))
    env.reset(seed)
    np.testing.assert_allclose(
        position_actions[:, :2], np.broadcast_to(env.scene.objects[0].center, (len(position_actions), 2)), atol=1e-7
    )
    np.testing.assert_array_equal(position_actions[:, -1], delta_actions[:, -1])


def test_far_from_the_target_the_delta_experts_action_is_saturated_and_says_only_the_direction():
    saturated = {"far": [], "near": []}
    for seed in range(40):
        path, actions = _expert_path(ShapesTask(min_objects=1, max_objects=1), seed)
        env = ShapesEnv(ShapesTask(min_objects=1, max_objects=1))
        env.reset(seed)
        offsets = np.abs(np.asarray(env.scene.objects[0].center) - path[: len(actions)]).max(axis=1)
        for offset, action in zip(offsets, actions, strict=True):
            side = "far" if offset >= rollout.NEAR_DISTANCE else "near"
            saturated[side].append(np.abs(action[:2]).max() == 1.0)
    assert len(saturated["far"]) > 50 and all(saturated["far"])
    assert not all(saturated["near"])


def test_a_position_action_is_approached_by_at_most_max_step_per_axis():
    env = ShapesEnv(ShapesTask(action_space="position"))
    env.reset(0)
    env.effector = np.array([0.2, 0.5])
    goal = np.array([0.9, 0.55, 0, 0, 0, 0, -1.0])
    env.move(goal)
    np.testing.assert_allclose(env.effector, [0.2 + MAX_STEP, 0.55], atol=0.03)  # 0.03: a few drift stds
    for _ in range(10):
        env.move(goal)
    np.testing.assert_allclose(env.effector, goal[:2], atol=0.03)


def test_an_unknown_action_space_is_refused():
    with pytest.raises(ValueError, match="action_space"):
        ShapesTask(action_space="velocity")


CLOSE = np.array([0, 0, 0, 0, 0, 0, 1.0])


def _two_object_env() -> ShapesEnv:
    env = ShapesEnv()
    env.reset(3)
    objects = (SceneObject("red", "square", (0.3, 0.3)), SceneObject("blue", "circle", (0.7, 0.7)))
    env.set_scene(Scene(objects, target=0))
    return env


def test_grasping_another_object_fails_and_ends_the_episode():
    env = _two_object_env()
    env.effector = np.array([0.7, 0.7 + GRASP_RADIUS * 0.9])
    step = env.step(CLOSE)
    assert step.done and not step.success


def test_closing_over_the_bare_table_grasps_nothing_and_the_episode_goes_on():
    env = _two_object_env()
    env.effector = np.array([0.3 + GRASP_RADIUS * 1.1, 0.3])
    step = env.step(CLOSE)
    assert not step.done and not step.success and env.steps == 1


def test_grasping_within_the_radius_of_the_target_succeeds():
    env = _two_object_env()
    env.effector = np.array([0.3, 0.3 - GRASP_RADIUS * 0.9])
    step = env.step(CLOSE)
    assert step.done and step.success


def test_a_policy_that_never_closes_runs_out_of_steps():
    env = ShapesEnv(ShapesTask(max_steps=5))
    idle = type("Idle", (), {"infer": lambda self, obs: {"actions": np.full((4, 7), -1.0)}})()
    result = rollout.run_episode(env, idle, 0, replan_steps=4)
    assert not result.success and result.steps == 5


def test_shared_attributes_give_every_prompt_word_a_distractor():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng, ShapesTask(min_objects=3, max_objects=4, shared_attributes=True))
        target = scene.objects[scene.target]
        others = [o for i, o in enumerate(scene.objects) if i != scene.target]
        assert any(o.color == target.color for o in others) and any(o.shape == target.shape for o in others)
        assert len({(o.color, o.shape) for o in scene.objects}) == len(scene.objects)


def test_masks_cover_the_rendered_objects_in_both_cameras():
    env = ShapesEnv(ShapesTask(image_size=112))
    obs = env.reset(1)
    masks = env.masks()
    for index, obj in enumerate(env.scene.objects):  # colours are distinct by default
        colour_pixels = np.all(obs["observation/image"] == np.array(COLORS[obj.color]), axis=-1)
        mask = masks["image"][index]
        assert np.array_equal(colour_pixels, colour_pixels & mask), "every pixel of the colour is in the mask"
        assert colour_pixels.sum() >= 0.7 * mask.sum() > 0, "the mask is the object (less the effector ring)"
    assert masks["wrist_image"].shape == masks["image"].shape


def test_target_recall_is_one_for_exactly_the_target_and_zero_for_background():
    env = ShapesEnv(ShapesTask(image_size=112))
    env.reset(7)
    objects = GRID.object_patches(env.masks())
    target = env.scene.target
    exact = rollout.score_kept_patches(objects[target], objects, target)
    assert exact.target_recall == 1.0 and exact.on_object == 1.0 and exact.target_hit
    background = ~objects.any(axis=0)
    background[2 * GRID.patches_per_slot :] = False  # the absent third slot holds no patches of the scene
    none = rollout.score_kept_patches(background, objects, target)
    assert none.target_recall == 0.0 and none.on_object == 0.0 and not none.target_hit
    half = objects[target] & (np.cumsum(objects[target]) <= objects[target].sum() // 2)
    assert rollout.score_kept_patches(half, objects, target).target_recall == pytest.approx(
        (objects[target].sum() // 2) / objects[target].sum()
    )


def test_pixel_recall_weighs_each_target_patch_by_the_share_of_the_target_it_holds():
    env = ShapesEnv(ShapesTask(image_size=112, min_objects=1, max_objects=1))
    env.reset(5)
    masks = env.masks()
    coverage = GRID.object_coverage(masks)
    target = env.scene.target
    pixels = GRID.patch_size**2
    assert coverage[target].sum() * pixels == pytest.approx(
        masks["image"][target].sum() + masks["wrist_image"][target].sum()
    )
    assert np.array_equal(coverage > 0, GRID.object_patches(masks))
    assert rollout.score_kept_patches(coverage[target] > 0, coverage, target).target_pixel_recall == pytest.approx(1.0)
    largest = np.zeros_like(coverage[target], dtype=bool)
    largest[coverage[target].argmax()] = True
    score = rollout.score_kept_patches(largest, coverage, target)
    assert score.target_recall == pytest.approx(1 / (coverage[target] > 0).sum())
    assert score.target_pixel_recall == pytest.approx(coverage[target].max() / coverage[target].sum())
    assert score.target_pixel_recall > score.target_recall  # the largest patch holds more than an average one
    assert rollout.score_kept_patches(~largest, coverage, target).target_pixel_recall == pytest.approx(
        1 - score.target_pixel_recall
    )


def test_per_camera_scores_split_the_pooled_patches_by_camera():
    env = ShapesEnv(ShapesTask(image_size=112, min_objects=1, max_objects=1))
    env.reset(3)
    target = env.scene.target
    per_slot = GRID.patches_per_slot
    env.effector = np.asarray(env.scene.objects[target].center)  # the wrist camera looks at the target
    objects = GRID.object_patches(env.masks())
    third_person_target = objects[target].copy()
    third_person_target[per_slot:] = False
    wrist_target = objects[target, per_slot : 2 * per_slot].sum()
    assert third_person_target.sum() > 0 and wrist_target > 0
    seen = rollout.score_kept_patches(third_person_target, objects, target, GRID)
    image, wrist = seen.by_camera  # the model's third camera slot is no camera of the env
    assert (image.camera, image.kept, image.target_kept) == ("image", third_person_target.sum(), image.target_patches)
    assert (wrist.camera, wrist.kept, wrist.target_kept, wrist.target_patches) == ("wrist_image", 0, 0, wrist_target)
    env.effector = np.asarray(env.scene.objects[target].center) + np.array([0.5, 0.0]) * (
        1 if env.effector[0] < 0.5 else -1
    )  # the wrist camera looks away
    away = rollout.score_kept_patches(third_person_target, GRID.object_patches(env.masks()), target, GRID)
    summary = rollout.camera_summary([seen, away])
    assert summary["kept_share_image"] == 1.0 and summary["kept_share_wrist_image"] == 0.0
    assert summary["target_recall_image"] == 1.0 and summary["target_in_view_image"] == 1.0
    assert summary["target_recall_wrist_image"] == 0.0 and summary["target_in_view_wrist_image"] == 0.5
    assert summary["target_patches_wrist_image"] == wrist_target  # over the inferences it is in view
    assert summary["target_patches_image"] == third_person_target.sum()


def test_final_recall_scores_each_episodes_last_inference():
    hit, miss = rollout.KeptPatchScore(1.0, 1.0, 1.0, True, 4), rollout.KeptPatchScore(0.0, 0.0, 0.0, False, 4)
    results = [
        rollout.EpisodeResult(seed=0, success=True, steps=4, kept_patches=[miss, miss, miss, hit]),
        rollout.EpisodeResult(seed=1, success=False, steps=2, kept_patches=[hit, miss]),
    ]
    summary = rollout.summarize(results)
    assert summary["target_hit_rate"] == pytest.approx(2 / 6) and summary["target_recall"] == pytest.approx(2 / 6)
    assert summary["target_hit_rate_final"] == summary["target_recall_final"] == 0.5


class KeepsTargetNearEffectorPolicy(ExpertPolicy):
    """The expert, keeping the target's patches only once the target is in the wrist camera's view."""

    def infer(self, obs: dict) -> dict:
        objects = GRID.object_patches(self.env.masks())
        target = self.env.scene.target
        near = np.abs(np.asarray(self.env.scene.objects[target].center) - self.env.effector).max() < 0.2  # in view
        return {**super().infer(obs), "kept_patch_mask": objects[target] & near}


def test_distance_split_finds_a_kept_set_that_sees_the_target_only_near_the_effector():
    env = ShapesEnv(ShapesTask(image_size=112, min_objects=1, max_objects=1))
    policy = KeepsTargetNearEffectorPolicy(env)
    results = [rollout.run_episode(env, policy, seed, replan_steps=1, grid=GRID) for seed in range(20)]
    summary = rollout.summarize(results)
    assert summary["target_hit_rate_near"] == summary["target_recall_near"] == 1.0
    assert summary["target_hit_rate_far"] == summary["target_recall_far"] == 0.0
    assert 0.0 < summary["target_far_share"] < 1.0
    assert summary["target_hit_rate"] == pytest.approx(1.0 - summary["target_far_share"])
    assert rollout.distance_summary([rollout.KeptPatchScore(1.0, 1.0, 1.0, True, 4)]) == {}  # no offset recorded


class KeepsObjectsPolicy:
    """Keeps the patches of the named target (``follows_prompt``) or of every object, whatever the prompt."""

    def __init__(self, env: ShapesEnv, follows_prompt: bool) -> None:
        self.env, self.follows_prompt = env, follows_prompt

    def infer(self, obs: dict) -> dict:
        objects = GRID.object_patches(self.env.masks())
        kept = objects[self.env.scene.target] if self.follows_prompt else objects.any(axis=0)
        return {"kept_patch_mask": kept}


@pytest.mark.parametrize("follows_prompt", [True, False])
def test_prompt_swap_separates_a_pruner_that_follows_the_prompt_from_one_that_keeps_everything(follows_prompt):
    env = ShapesEnv(ShapesTask(image_size=112, min_objects=2, max_objects=2))
    swap = rollout.prompt_swap(env, KeepsObjectsPolicy(env, follows_prompt), range(5), GRID)
    assert swap["recall_named_target"] == swap["recall_after_swap"] == 1.0
    if follows_prompt:  # only patches the two objects share are kept before the other one is named
        assert swap["recall_other_before_swap"] < 0.5 and swap["kept_set_changed"] > 0.5
    else:
        assert swap["recall_other_before_swap"] == 1.0 and swap["kept_set_changed"] == 0.0


class GoesToFirstTargetPolicy(ExpertPolicy):
    """The expert toward the target each scene had when first seen, keeping that target's patches: a policy that
    ignores a changed prompt."""

    def __init__(self, env: ShapesEnv) -> None:
        super().__init__(env)
        self.first_targets: dict[tuple, int] = {}

    def infer(self, obs: dict) -> dict:
        scene = self.env.scene
        target = self.first_targets.setdefault(scene.objects, scene.target)
        action = expert_action(Scene(scene.objects, target), self.env.effector)
        return {
            "actions": np.stack([action] * self.horizon),
            "kept_patch_mask": GRID.object_patches(self.env.masks())[target],
        }


def test_swapped_episodes_count_success_and_recall_on_the_newly_named_object():
    env = ShapesEnv(ShapesTask(image_size=112, min_objects=3, max_objects=3, shared_attributes=True))
    expert = KeepsTargetNearEffectorPolicy(env)
    swap = rollout.swapped_episodes(env, expert, range(10), replan_steps=1, grid=GRID)
    assert swap["success_after_swap"] == 1.0 and swap["episode_recall_after_swap"] > 0.0
    stubborn = GoesToFirstTargetPolicy(env)
    for seed in range(10):
        env.reset(seed)
        stubborn.infer({})  # the scene first seen with its own target
    swap = rollout.swapped_episodes(env, stubborn, range(10), replan_steps=1, grid=GRID)
    assert swap["success_after_swap"] == 0.0 and swap["episode_recall_after_swap"] < 0.2  # objects rarely share a patch


def test_object_patches_follow_the_model_grid():
    env = ShapesEnv(ShapesTask(image_size=112))
    env.reset(0)
    env.set_scene(Scene((dataclasses.replace(env.scene.objects[0], center=(0.0625, 0.0625)),), 0))
    patches = GRID.object_patches(env.masks())[0]
    side = 112 // 14
    base = patches[: side * side].reshape(side, side)
    assert base[0, 0] and base[0:2, 0:2].sum() == base.sum(), "an object at the top-left corner lies in those patches"


def test_wilson_interval():
    low, high = rollout.wilson_interval(80, 100)
    assert low == pytest.approx(0.7112, abs=1e-3) and high == pytest.approx(0.8666, abs=1e-3)
    assert rollout.wilson_interval(0, 10)[0] == 0.0 and rollout.wilson_interval(10, 10)[1] == 1.0

"""Closed-loop evaluation of a policy on held-out shapes scenes (the pruning testbed).

    uv run scripts/eval_closed_loop.py --policy.config pi05_shapes_lightvla --policy.dir CKPT --episodes 100 --seed 0
    uv run scripts/eval_closed_loop.py ... --token-prune-keep-ratio 0.25      # a fixed budget
    uv run scripts/eval_closed_loop.py ... --random-keep                      # as many patches, chosen at random
    uv run scripts/eval_closed_loop.py ... --mask-images                      # every camera masked (blind)
    uv run scripts/eval_closed_loop.py ... --exclude-target                   # the pruner may not keep the target
    uv run scripts/eval_closed_loop.py --host 127.0.0.1 --port 8000 ...       # against serve_policy.py

Episode ``i`` starts from scene seed ``HELD_OUT_SEED_BASE + seed * 100_000 + i`` (``openpi.envs.rollout``), a stream
no training dataset draws from. The last line of the output is one JSON object: ``success_rate``, ``ci95`` (Wilson),
``episodes``, ``mean_steps``, ``kept_tokens_mean``, ``kept_ratio_mean``, ``target_recall``, ``target_pixel_recall``
(the target's pixels in kept patches / its pixels), ``target_hit_rate``, ``kept_on_object``, ``target_recall_final``
and ``target_hit_rate_final`` (each episode's last inference), ``infer_ms_p50``, per camera ``c`` (``image``,
``wrist_image``) ``kept_share_c``, ``target_in_view_c``, ``target_patches_c`` and ``target_recall_c`` (the last two
over the inferences where the target is in that camera's view), ``target_far_share`` with
``target_recall_near``/``_far`` and ``target_hit_rate_near``/``_far`` (split at the target's centre entering the
wrist camera's view), and ``prompt_swap`` with ``--prompt-swap N``.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import torch
import tqdm
import tyro

from openpi import transforms
from openpi.envs import rollout
from openpi.envs.shapes import ShapesEnv
from openpi.policies import policy_config
from openpi.policies.shapes_policy import EmbeddedDataConfig
from openpi.serving.websocket_client import WebsocketClientPolicy
from openpi.training import config as _config


@dataclasses.dataclass
class PolicyArgs:
    config: str = "pi05_shapes_lightvla"
    """Training config of the checkpoint (its scene difficulty and model)."""
    dir: str = ""
    """Checkpoint folder (in-process evaluation)."""


@dataclasses.dataclass
class Args:
    policy: PolicyArgs = dataclasses.field(default_factory=PolicyArgs)
    episodes: int = 100
    seed: int = 0
    token_prune_keep_ratio: float | None = None
    token_prune_keep_tokens: int | None = None
    token_prune_keep_neighbours: int | None = None
    """Keep the neighbourhoods of this radius of the top-ranked patches under the budget (None: the config's)."""
    mask_images: bool = False
    """Mask every camera at inference."""
    random_keep: bool = False
    """Keep as many patches as the pruner would, chosen uniformly at random."""
    exclude_target: bool = False
    """The pruner may not keep the named target's patches (the env's object masks; its budget is filled from the
    other patches): does the policy need the target's own tokens?"""
    exclude_target_when_far: bool = False
    """With ``--exclude-target``, exclude them only at the inferences where the target is outside the wrist camera's
    view ("far", where only the third-person camera shows the way): does the policy need them there?"""
    replan_steps: int = 2
    """Actions executed from each predicted chunk before the next inference."""
    prompt_swap: int = 0
    """Also run the prompt-swap test on this many scenes (pruning policies)."""
    host: str | None = None
    port: int = 8000


def held_out_seeds(args: Args) -> list[int]:
    return [rollout.HELD_OUT_SEED_BASE + args.seed * 100_000 + i for i in range(args.episodes)]


def main(args: Args) -> dict:
    train_config = _config.get_config(args.policy.config)
    if not isinstance(train_config.data, EmbeddedDataConfig):
        raise ValueError(f"Config {args.policy.config!r} does not train on the shapes scene")
    policy = _remote(args) if args.host else _in_process(args, train_config)
    summary = evaluate(args, train_config, policy)
    print(json.dumps(summary))
    return summary


def evaluate(args: Args, train_config: _config.TrainConfig, policy: rollout.Policy) -> dict:
    """Runs ``args.episodes`` held-out episodes of ``train_config``'s scene (and the prompt-swap test) and
    summarises them."""
    env = ShapesEnv(train_config.data.spec.task)
    vision = train_config.model.vision_config
    grid = rollout.PatchGrid(vision.image_size, vision.patch_size)
    if args.exclude_target_when_far and not args.exclude_target:
        raise ValueError("--exclude-target-when-far narrows --exclude-target: pass both")
    if args.exclude_target:
        policy = TargetExcludingPolicy(policy, env, grid, only_when_far=args.exclude_target_when_far)
    results = [
        rollout.run_episode(env, policy, seed, replan_steps=args.replan_steps, grid=grid)
        for seed in tqdm.tqdm(held_out_seeds(args), desc="episodes", unit="episode")
    ]
    summary = rollout.summarize(results)
    if args.prompt_swap:
        summary["prompt_swap"] = rollout.prompt_swap(env, policy, held_out_seeds(args)[: args.prompt_swap], grid)
    return summary


def _in_process(args: Args, train_config: _config.TrainConfig):
    train_config.data.prepare()  # the policy's pipeline reads the testbed's tokenizer
    torch.manual_seed(args.seed)
    policy = policy_config.create_trained_policy(train_config, args.policy.dir, pytorch_device="cpu")
    if args.mask_images:
        policy.input_transforms = (*policy.input_transforms, transforms.MaskImages())
    model = policy.model
    if model.token_pruning_enabled:
        model.set_token_pruner_keep_ratio(args.token_prune_keep_ratio)
        model.set_token_pruner_keep_tokens(args.token_prune_keep_tokens)
        model.pruner.random_keep = args.random_keep
        if args.token_prune_keep_neighbours is not None:
            model.pruner.keep_neighbours = args.token_prune_keep_neighbours
        model.pruner.random_generator = torch.Generator().manual_seed(args.seed)
        policy.return_kept_patches = True
    elif (
        args.token_prune_keep_ratio
        or args.token_prune_keep_tokens
        or args.token_prune_keep_neighbours
        or args.random_keep
        or args.exclude_target
    ):
        raise ValueError(
            f"{args.policy.config} has no pruner: budgets, neighbourhoods, --random-keep and --exclude-target need "
            "a pruning config"
        )
    return policy


def _remote(args: Args) -> WebsocketClientPolicy:
    if (
        args.mask_images
        or args.random_keep
        or args.token_prune_keep_ratio
        or args.token_prune_keep_tokens
        or args.token_prune_keep_neighbours is not None
    ):
        raise ValueError(
            "Budgets, neighbourhoods, --random-keep and --mask-images are set on the server (serve_policy.py)"
        )
    if args.exclude_target:
        raise ValueError("--exclude-target needs the policy in process (it reads the env's object masks)")
    return WebsocketClientPolicy(args.host, args.port)


@dataclasses.dataclass
class TargetExcludingPolicy:
    """An in-process pruning policy whose pruner, at every inference (``only_when_far``: those with the target outside
    the wrist camera's view), may not keep the patches of the target the env's prompt names (a control for what
    target recall measures)."""

    policy: rollout.Policy
    env: ShapesEnv
    grid: rollout.PatchGrid
    only_when_far: bool = False

    def infer(self, obs: dict, **kwargs) -> dict:
        excluded = None
        if not self.only_when_far or rollout.target_offset(self.env) >= rollout.NEAR_DISTANCE:
            excluded = torch.from_numpy(self.grid.object_patches(self.env.masks())[self.env.scene.target])  # [N]
        self.policy.model.pruner.excluded_patches = excluded
        return self.policy.infer(obs, **kwargs)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(tyro.cli(Args))

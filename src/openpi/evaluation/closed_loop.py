"""Closed-loop evaluation of a policy on held-out shapes scenes (the pruning testbed), in process or over a websocket.

Episode ``i`` of seed ``s`` starts from scene seed ``HELD_OUT_SEED_BASE + s * 100_000 + i``
(:mod:`openpi.envs.rollout`), a stream no training dataset draws from. The summary is
:func:`openpi.envs.rollout.summarize`'s (success with its Wilson interval, steps, kept patches, target recall, latency),
plus ``prompt_swap`` when asked.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tqdm
import tyro

from openpi import transforms
from openpi.envs import rollout
from openpi.envs.chunk_execution import RTCChoice
from openpi.envs.shapes import ShapesEnv
from openpi.policies import policy_config
from openpi.policies.policy import Policy
from openpi.policies.shapes_policy import EmbeddedDataConfig
from openpi.serving.async_runtime import AsyncChunkRuntime
from openpi.serving.websocket_client import WebsocketClientPolicy
from openpi.training import config as _config

SEEDS_PER_EVALUATION_SEED = 100_000


@dataclasses.dataclass
class PolicyArgs:
    config: str = "pi05_shapes_lightvla"
    """Training config of the checkpoint (its scene difficulty and model)."""
    dir: str = ""
    """Checkpoint folder (in-process evaluation)."""


@dataclasses.dataclass
class Args:
    policy: PolicyArgs = dataclasses.field(default_factory=PolicyArgs)
    """The checkpoint to evaluate in process."""
    episodes: int = 100
    """Held-out episodes to run."""
    seed: int = 0
    """Held-out scene stream (and the seed of the random controls)."""
    token_prune_keep_ratio: float | None = None
    """Serve with this fraction of the valid patches (None: the config's budget)."""
    token_prune_keep_tokens: int | None = None
    """Serve with this many patches (None: the config's budget)."""
    mask_images: bool = False
    """Mask every camera at inference (the blind control)."""
    random_keep: bool = False
    """Keep as many patches as the pruner would, chosen uniformly at random (the random control)."""
    replan_steps: int = 2
    """Actions executed from each predicted chunk before the next inference is asked for."""
    inference_delay: int = 0
    """Simulated inference delay in control steps: a chunk arrives this many steps after its observation. Against a
    served policy (``--host``) with ``--async`` the delay is the real one, measured."""
    run_async: Annotated[bool, tyro.conf.arg(name="async")] = False
    """Keep executing the current chunk while the next is computed (default: the robot waits for it)."""
    rtc: RTCChoice = "none"
    """Real-time chunking of asynchronous execution: the next chunk continues the current one (docs/rtc.md)."""
    prompt_swap: int = 0
    """Also run the prompt-swap test on this many scenes (pruning policies): the kept set's recall of another object
    of the scene before and after the prompt names it, and whole episodes with that object named (success, recall)."""
    host: str | None = None
    """Evaluate the policy served at this host (serve_policy.py) instead of loading it."""
    port: int = 8000
    """Port of the policy served at --host."""


def held_out_seeds(episodes: int, seed: int) -> list[int]:
    """The scene seeds of ``episodes`` held-out episodes of evaluation seed ``seed``."""
    start = rollout.HELD_OUT_SEED_BASE + seed * SEEDS_PER_EVALUATION_SEED
    return list(range(start, start + episodes))


def run(args: Args) -> dict:
    """Loads (or connects to) the policy and evaluates it; returns the summary."""
    train_config = _config.get_config(args.policy.config)
    if not isinstance(train_config.data, EmbeddedDataConfig):
        raise ValueError(f"Config {args.policy.config!r} does not train on the shapes scene")
    policy = connect(args) if args.host else load_policy(args, train_config)
    return evaluate(args, train_config, policy)


def evaluate(args: Args, train_config: _config.TrainConfig, policy: rollout.Policy) -> dict:
    """Runs ``args.episodes`` held-out episodes of ``train_config``'s scene (and the prompt-swap test) and
    summarises them."""
    env = ShapesEnv(train_config.data.spec.task)
    vision = train_config.model.vision_config
    grid = rollout.PatchGrid(vision.image_size, vision.patch_size)
    seeds = held_out_seeds(args.episodes, args.seed)
    results: list[rollout.EpisodeResult] = []
    progress = tqdm.tqdm(seeds, desc="episodes", unit="episode")  # with the ETA and the success so far
    for seed in progress:
        if args.host and args.run_async:
            results.append(run_served_async(env, policy, seed, args))
        else:
            results.append(
                rollout.run_episode(env, policy, seed, replan_steps=args.replan_steps, grid=grid, latency=latency(args))
            )
        progress.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}", steps=results[-1].steps)
    summary = rollout.summarize(results)
    if args.prompt_swap:
        swapped = seeds[: args.prompt_swap]
        summary["prompt_swap"] = {
            **rollout.prompt_swap(env, policy, swapped, grid),
            **rollout.swapped_episodes(env, policy, swapped, replan_steps=args.replan_steps, grid=grid),
        }
    return summary


def run_served_async(env: ShapesEnv, policy: rollout.Policy, seed: int, args: Args) -> rollout.EpisodeResult:
    """One episode through :class:`AsyncChunkRuntime`: the env steps while the served policy infers, unpaced (the
    delay is however many steps run during an inference)."""
    latest = {"observation": env.reset(seed)}
    result = rollout.EpisodeResult(seed=seed, success=False, steps=0)

    def act(action) -> bool:
        step = env.step(action)
        latest["observation"], result.success = step.observation, step.success
        return step.done

    runtime = AsyncChunkRuntime(policy, replan_steps=args.replan_steps, rtc=args.rtc)
    stats = runtime.run(lambda: latest["observation"], act, max_steps=env.task.max_steps)
    result.steps, result.control_steps, result.smoothness = env.steps, stats.executed + stats.waited, stats.smoothness
    return result


def latency(args: Args) -> rollout.Latency:
    """The simulated latency and execution of ``args``."""
    return rollout.Latency(args.inference_delay, "async" if args.run_async else "sync", args.rtc)


def load_policy(args: Args, train_config: _config.TrainConfig) -> Policy:
    """The checkpoint's policy on the CPU with the evaluation's budget and controls, returning its kept patches."""
    import torch  # with the model: imported by an in-process evaluation, not by --help or a served one

    from openpi.evaluation.random_patches import use_random_patches
    from openpi.models_pytorch.pi0_pytorch import PI0Pytorch

    torch.manual_seed(args.seed)
    train_config.data.prepare()  # the testbed's tokenizer
    policy = policy_config.create_trained_policy(train_config, args.policy.dir, pytorch_device="cpu")
    if args.mask_images:
        policy.input_transforms = (*policy.input_transforms, transforms.MaskImages())
    model = policy.model
    if not model.token_pruning_enabled:
        if args.token_prune_keep_ratio or args.token_prune_keep_tokens or args.random_keep:
            raise ValueError(f"{args.policy.config} has no pruner: budgets and --random-keep need a pruning config")
        return policy
    if args.random_keep:
        if not isinstance(model, PI0Pytorch):
            raise ValueError("--random-keep needs a PyTorch checkpoint")
        use_random_patches(model, torch.Generator().manual_seed(args.seed))
    model.set_token_pruner_keep_ratio(args.token_prune_keep_ratio)
    model.set_token_pruner_keep_tokens(args.token_prune_keep_tokens)
    policy.return_kept_patches = True
    return policy


def connect(args: Args) -> WebsocketClientPolicy:
    """A client of the policy served at ``args.host``; what the server sets cannot be set from here."""
    if args.mask_images or args.random_keep or args.token_prune_keep_ratio or args.token_prune_keep_tokens:
        raise ValueError("Budgets, --random-keep and --mask-images are set on the server (serve_policy.py)")
    return WebsocketClientPolicy(args.host, args.port)

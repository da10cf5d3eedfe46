"""Do the kept tokens still say where the target is? A position probe on the pruner's kept set.

    uv run python -m research.lightvla.probe --arm budget_trained25_gated --seeds 0 1 2 \
        --objects 1 --num-episodes 1000 --steps 6000 --work-dir outputs/one_object

Target recall counts the target's own patches in the kept set. But the pruner chooses among the vision tower's
*output* tokens, and the tower's self-attention lets a background token carry where the target is. This benchmark
asks the question recall stands in for: can the way to the target be read from the tokens the language model gets?

For each training seed of ``--arm`` (checkpoints from :mod:`research.lightvla.driver`'s ``--work-dir``), it walks
the scripted expert through held-out scenes (seeds no training dataset and no closed-loop evaluation draws from),
records the image tokens that reach the pruner, the pruner's kept set and the target's patches, and fits a small
attention-pooling probe (learned patch-position embeddings, as the language model knows each token's position) to
decode the target's offset from the effector (``target − effector``, what the expert's action follows; the wrist
view shows it directly) from a token set. One set of scenes fits the probe, another tests it. Token sets:
``all`` patches, the pruner's ``kept`` set, ``random`` (as many, uniformly), ``background`` (every patch off the
target), ``kept_background`` (the kept set without the target's patches) and ``random_background`` (as many
background patches at random). Reported: test RMSE in workspace units, also over the frames whose kept set holds
none of the target's patches, and the share of test frames decoded within an object's radius, per seed, with paired
t-intervals over the seeds.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import statistics
from pathlib import Path

import numpy as np
import torch
import tqdm
import tyro
from torch import nn

from openpi.envs import rollout
from openpi.envs.shapes import OBJECT_RADIUS, ShapesEnv
from openpi.policies import policy_config
from research.lightvla.driver import Args as ClosedLoopArgs
from research.lightvla.driver import train_config
from research.paired import paired_difference

RESULTS = Path(__file__).parent / "results"
# Scene seeds for fitting and testing the probe: far from the training datasets' streams and from
# openpi.envs.rollout.HELD_OUT_SEED_BASE + seed * 100_000 + i.
FIT_SEED_BASE = 2_000_000_000
TEST_SEED_BASE = 3_000_000_000
TOKEN_SETS = ("all", "kept", "random", "background", "kept_background", "random_background")
# (set, baseline): the paired differences reported.
COMPARISONS = (("kept", "random"), ("kept_background", "random_background"), ("kept", "all"), ("background", "all"))


@dataclasses.dataclass
class Args:
    arm: str = "budget_trained25_gated"
    """Training arm of research.lightvla.driver whose checkpoints are probed (a pruning arm)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    objects: int | None = 1
    num_episodes: int | None = 1000
    steps: int | None = 6000
    """Objects per scene, training scenes and steps the arm was trained with (as given to the driver)."""
    work_dir: Path = Path("outputs") / "one_object"
    fit_scenes: int = 400
    test_scenes: int = 200
    frames_per_scene: int = 8
    """Frames recorded per scene while the expert approaches the target (far views first, then the wrist view)."""
    probe_steps: int = 1500
    threads: int = 1
    output: Path = RESULTS / "probe.md"


@dataclasses.dataclass
class Frames:
    """Recorded frames: the tokens the pruner saw and what it kept."""

    tokens: torch.Tensor  # [F, N, W] the pooled image tokens reaching the pruner
    valid: torch.Tensor  # [F, N] bool, False for an absent camera's patches
    kept: torch.Tensor  # [F, N] bool, the pruner's kept set
    target: torch.Tensor  # [F, N] bool, patches covering the target
    offset: torch.Tensor  # [F, 2] the target's centre minus the effector's position, in workspace units


class AttentionProbe(nn.Module):
    """Decodes ``(x, y)`` from a token set: learned position embeddings, multi-head attention pooling, an MLP."""

    def __init__(self, width: int, num_tokens: int, hidden: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.position = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.key = nn.Linear(width, hidden)
        self.value = nn.Linear(width, hidden)
        self.query = nn.Parameter(torch.randn(heads, hidden // heads) * 0.02)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens [F, N, W]``, ``mask [F, N]`` (the set; at least one token per frame) -> ``[F, 2]``."""
        frames, num_tokens, _ = tokens.shape
        x = self.norm(tokens) + self.position  # [F, N, W]
        keys = self.key(x).view(frames, num_tokens, self.heads, -1)  # [F, N, H, D]
        values = self.value(x).view(frames, num_tokens, self.heads, -1)
        logits = torch.einsum("fnhd,hd->fhn", keys, self.query) / math.sqrt(keys.shape[-1])
        weights = logits.masked_fill(~mask[:, None], float("-inf")).softmax(dim=-1)  # [F, H, N]
        pooled = torch.einsum("fhn,fnhd->fhd", weights, values).reshape(frames, -1)  # [F, H * D]
        return self.head(pooled)


def record_frames(policy, env: ShapesEnv, grid: rollout.PatchGrid, seeds: list[int], per_scene: int) -> Frames:
    """Walks the expert through each scene's first ``per_scene`` frames, running the policy on each."""
    observations, targets, offsets = [], [], []
    for seed in seeds:
        env.reset(seed)
        center = np.asarray(env.scene.objects[env.scene.target].center, dtype=np.float32)
        for _ in range(per_scene):
            observations.append(env.observation())
            targets.append(grid.object_patches(env.masks())[env.scene.target])
            offsets.append(center - env.effector.astype(np.float32))
            env.move(env.expert_action())
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = policy.model.pruner.register_forward_hook(
        lambda _module, inputs, _output: captured.append((inputs[0].detach().float(), inputs[3].detach()))
    )
    kept = []
    try:
        for start in tqdm.trange(0, len(observations), 64, desc="frames", unit="batch"):
            kept.append(policy.infer_batch(observations[start : start + 64])["kept_patch_mask"])
    finally:
        hook.remove()
    return Frames(
        tokens=torch.cat([tokens for tokens, _ in captured]),
        valid=torch.cat([valid for _, valid in captured]).bool(),
        kept=torch.as_tensor(np.concatenate(kept)).bool(),
        target=torch.as_tensor(np.stack(targets)).bool(),
        offset=torch.as_tensor(np.stack(offsets)),
    )


def token_set(frames: Frames, name: str, generator: torch.Generator) -> torch.Tensor:
    """``[F, N]`` bool: the tokens of set ``name`` (see the module docstring)."""
    background = frames.valid & ~frames.target
    if name == "all":
        return frames.valid
    if name == "kept":
        return frames.kept
    if name == "background":
        return background
    if name == "kept_background":
        return frames.kept & ~frames.target
    if name == "random":
        return random_subset(frames.valid, frames.kept.sum(dim=1), generator)
    if name == "random_background":
        return random_subset(background, (frames.kept & ~frames.target).sum(dim=1), generator)
    raise ValueError(f"Unknown token set {name!r}; choose from {TOKEN_SETS}")


def random_subset(allowed: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per row, ``counts[row]`` of the ``allowed [F, N]`` entries, uniformly at random."""
    scores = torch.rand(allowed.shape, generator=generator).masked_fill(~allowed, -1.0)
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)  # [F, N] rank of each entry in its row
    return allowed & (ranks < counts[:, None])


def fit_probe(fit: Frames, fit_set: torch.Tensor, steps: int, seed: int) -> AttentionProbe:
    """Fits a probe on ``fit``'s frames, each seeing its ``fit_set`` tokens (MSE on the target's offset, AdamW)."""
    if not fit_set.any(dim=1).all():
        raise ValueError("Every frame needs at least one token in the probed set")
    torch.manual_seed(seed)
    probe = AttentionProbe(fit.tokens.shape[-1], fit.tokens.shape[1])
    optimizer = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(fit.tokens), (256,), generator=generator)
        loss = (probe(fit.tokens[batch], fit_set[batch]) - fit.offset[batch]).square().sum(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return probe


@torch.no_grad()
def probe_errors(probe: AttentionProbe, frames: Frames, probed: torch.Tensor) -> torch.Tensor:
    """``[F]`` distance between the decoded and the true offset."""
    return (probe(frames.tokens, probed) - frames.offset).norm(dim=-1)


def probe_seed(args: Args, seed: int) -> dict[str, dict[str, float]]:
    """Records the fit and test frames of one training seed's checkpoint and probes every token set."""
    config = train_config(args.arm, seed, _closed_loop_args(args))
    if not config.model.token_pruning_enabled:
        raise ValueError(f"Arm {args.arm!r} has no pruner to probe")
    checkpoint = Path(config.checkpoint_dir) / str(config.num_train_steps)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"No checkpoint {checkpoint}: train the arm with research.lightvla.driver first")
    config.data.prepare()  # the testbed's tokenizer
    policy = policy_config.create_trained_policy(config, checkpoint, pytorch_device="cpu")
    policy.return_kept_patches = True
    env = ShapesEnv(config.data.spec.task)
    vision = config.model.vision_config
    grid = rollout.PatchGrid(vision.image_size, vision.patch_size)
    fit, test = (
        record_frames(policy, env, grid, [base + seed * 100_000 + i for i in range(count)], args.frames_per_scene)
        for base, count in ((FIT_SEED_BASE, args.fit_scenes), (TEST_SEED_BASE, args.test_scenes))
    )
    results = {"mean_predictor": _mean_predictor(fit, test), "footprint": _footprint(test)}
    for index, name in enumerate(tqdm.tqdm(TOKEN_SETS, desc=f"probes seed {seed}")):
        generator = torch.Generator().manual_seed(seed * 100 + index)
        probe = fit_probe(fit, token_set(fit, name, generator), args.probe_steps, seed * 100 + index)
        probed = token_set(test, name, generator)
        results[name] = _summary(probe_errors(probe, test, probed), probed.sum(dim=1), _missed(test))
    return results


def _closed_loop_args(args: Args) -> ClosedLoopArgs:
    return ClosedLoopArgs(
        objects=args.objects, num_episodes=args.num_episodes, steps=args.steps, work_dir=args.work_dir.resolve()
    )


def _missed(frames: Frames) -> torch.Tensor:
    """``[F]`` bool: the frames whose kept set holds none of the target's patches."""
    return ~(frames.kept & frames.target).any(dim=1)


def _summary(errors: torch.Tensor, sizes: torch.Tensor, missed: torch.Tensor) -> dict[str, float]:
    return {
        "rmse": float(errors.square().mean().sqrt()),
        "rmse_missed": float(errors[missed].square().mean().sqrt()) if missed.any() else math.nan,
        "within_radius": float((errors < OBJECT_RADIUS).float().mean()),
        "tokens": float(sizes.float().mean()),
    }


def _mean_predictor(fit: Frames, test: Frames) -> dict[str, float]:
    """The blind baseline: every test frame decoded as the fit frames' mean offset."""
    errors = (test.offset - fit.offset.mean(dim=0)).norm(dim=-1)
    return _summary(errors, torch.zeros(len(errors)), _missed(test))


def _footprint(frames: Frames) -> dict[str, float]:
    """How the kept set sits on the target in these frames (the driver's recall and hit rate)."""
    target = frames.target.sum(dim=1).float()
    hits = (frames.kept & frames.target).sum(dim=1).float()
    return {
        "target_patches": float(target.mean()),
        "recall": float((hits / target.clamp(min=1)).mean()),
        "hit_rate": float((hits > 0).float().mean()),
    }


def report(args: Args, results: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """The Markdown section: per-seed RMSE and within-radius share per token set, then the paired differences."""
    seeds = sorted(results)
    command = (
        f"uv run python -m research.lightvla.probe --arm {args.arm} --seeds {' '.join(map(str, seeds))} "
        f"--objects {args.objects} --num-episodes {args.num_episodes} --steps {args.steps} --work-dir {args.work_dir}"
    )
    footprint = [results[s]["footprint"] for s in seeds]
    lines = [
        f"## {datetime.date.today()}: position probe on `{args.arm}`'s tokens ({len(seeds)} seeds, CPU)",
        "",
        "```",
        command,
        "```",
        "",
        f"{args.fit_scenes} scenes fit the probe and {args.test_scenes} other scenes test it, "
        f"{args.frames_per_scene} expert frames each; {args.probe_steps} probe steps. Test frames: the target "
        f"covers {_join([f['target_patches'] for f in footprint], 1)} patches per seed; the kept set holds "
        f"{_join(f['recall'] for f in footprint)} of them (recall) and at least one in "
        f"{_join(f['hit_rate'] for f in footprint)} of the frames.",
        "",
        "| token set | tokens | RMSE per seed | RMSE mean | RMSE where the kept set misses the target, per seed "
        "| within an object's radius, per seed |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("mean_predictor", *TOKEN_SETS):
        runs = [results[s][name] for s in seeds]
        lines.append(
            f"| {name} | {statistics.fmean(r['tokens'] for r in runs):.1f} | {_join([r['rmse'] for r in runs], 3)} "
            f"| {statistics.fmean(r['rmse'] for r in runs):.3f} | {_join([r['rmse_missed'] for r in runs], 3)} "
            f"| {_join(r['within_radius'] for r in runs)} |"
        )
    lines += ["", "| RMSE: set − baseline | per seed | mean [95% t-CI] |", "|---|---|---|"]
    for name, baseline in COMPARISONS:
        rmse = {s: results[s][name]["rmse"] for s in seeds}
        baseline_rmse = {s: results[s][baseline]["rmse"] for s in seeds}
        per_seed = _join((rmse[s] - baseline_rmse[s] for s in seeds), 3, "+")
        difference = paired_difference(rmse, baseline_rmse)
        cell = "–" if difference is None else f"{difference.mean:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]"
        lines.append(f"| {name} − {baseline} | {per_seed} | {cell} |")
    return lines


def _join(values, digits: int = 2, sign: str = "") -> str:
    """Comma-separated numbers; "–" where a value is undefined (no frame the kept set missed)."""
    return ", ".join("–" if math.isnan(v) else f"{v:{sign}.{digits}f}" for v in values)


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    results = {seed: probe_seed(args, seed) for seed in args.seeds}
    lines = report(args, results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as f:  # the results file keeps every run's section
        f.write("\n".join([*lines, "", ""]))
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))

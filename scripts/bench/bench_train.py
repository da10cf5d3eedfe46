"""Training throughput of the PyTorch trainer's step: unpruned, pruned, prompt trimming, deduplicated pruning and the
default pruner's budget training (every dropped patch gated, or a sample of them).

    uv run scripts/bench/bench_train.py                                  # tiny + mid-size on CPU
    uv run scripts/bench/bench_train.py --device cuda --dtype bfloat16 --batch-size 32

One step is exactly the trainer's (``trainer.train_step``): image augmentation, forward, backward, gradient clipping
and AdamW. Batches are synthetic (3 cameras at 224x224, a π0.5 prompt padded to 200 tokens of which 20 are valid, as
the pipeline pads LIBERO prompts), made once and reused, so data loading is not part of the measurement. The pruner's
noise is fixed at ``--noise-scale`` (the schedule's value halfway through training by default) and telemetry is off,
as on non-log steps. Cases: unpruned and pruned, each with the prompt's padding run through the model or trimmed
(``prompt_trim_multiple``), and pruned with the full-length prefix or the deduplicated one
(``token_prune_dedup_training``); and the ``*_lightvla`` default (budget training at 25%, the dropped patches gated:
``openpi.training.config.LIGHTVLA_PRUNING``) with every dropped patch in the prefix or a quarter of them
(``token_prune_gate_dropped_sample=0.25``). "prefix" is the length the transformer runs (patch rows + prompt columns).
Every case runs in a fresh child process, so its peak memory is its own: on CPU the peak resident set size above the
process's size before the model was built, on CUDA ``torch.cuda.max_memory_allocated``. Results are written as a
Markdown table into ``--output`` with the command line (a new run of the same command replaces its table).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import bench_common
import torch
import tyro

from openpi.models.observation import Observation, random_observation
from openpi.models.pi0_config import Pi0Config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared import results_file
from openpi.training import config as _config
from openpi.training import memory_profile

SIZES = {
    "tiny": Pi0Config(
        pi05=True,
        paligemma_variant="dummy",
        action_expert_variant="dummy",
        vision_variant="tiny",
        vocab_size=1024,
        action_horizon=10,
    ),
    "mid": Pi0Config(
        pi05=True,
        paligemma_variant="width=256,depth=6,mlp_dim=1024,num_heads=8,num_kv_heads=1,head_dim=32",
        action_expert_variant="width=128,depth=6,mlp_dim=512,num_heads=8,num_kv_heads=1,head_dim=32",
        vision_variant="hidden_size=192,num_hidden_layers=4,num_attention_heads=3,intermediate_size=768",
        vocab_size=4096,
        action_horizon=10,
    ),
}
MIB = bench_common.MIB


@dataclasses.dataclass
class Args:
    sizes: tuple[str, ...] = ("tiny", "mid")
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 4
    prompt_tokens: int = 200
    valid_prompt_tokens: int = 20
    noise_scale: float = 0.5
    # Untimed steps before measuring (first-step overheads: allocator warm-up, lazy imports).
    warmup_steps: int = 2
    steps: int = 5
    output: Path = Path(__file__).parent / "results" / "train.md"


# The default pruner's settings, and its dropped patches sampled: the pruning column's names for them.
DEFAULT_PRUNER = {name: value for name, value in _config.LIGHTVLA_PRUNING.items() if name != "token_pruning_enabled"}
BUDGET_RULES = {
    "default": DEFAULT_PRUNER,
    "default, sampled 25%": {**DEFAULT_PRUNER, "token_prune_gate_dropped_sample": 0.25},
}


@dataclasses.dataclass(frozen=True)
class Case:
    pruning: bool
    trim: bool
    dedup: bool
    budget_rule: str | None = None
    """A key of :data:`BUDGET_RULES` (None: LightVLA's union selection)."""

    @property
    def label(self) -> str:
        if not self.pruning:
            return f"| off | {'on' if self.trim else 'off'} | – "
        pruning = self.budget_rule or "on"
        dedup = "–" if self.budget_rule else "on" if self.dedup else "off"
        return f"| {pruning} | {'on' if self.trim else 'off'} | {dedup} "


CASES = (
    Case(pruning=False, trim=False, dedup=False),
    Case(pruning=False, trim=True, dedup=False),
    Case(pruning=True, trim=False, dedup=False),
    Case(pruning=True, trim=True, dedup=False),
    Case(pruning=True, trim=True, dedup=True),
    *(Case(pruning=True, trim=True, dedup=False, budget_rule=rule) for rule in BUDGET_RULES),
)


@dataclasses.dataclass(frozen=True)
class CaseResult:
    size: str
    case: Case
    step_s: float
    samples_per_s: float
    peak_mib: float
    prefix_tokens: float


def _batch(config: Pi0Config, args: Args) -> tuple[Observation, torch.Tensor]:
    observation = random_observation(config, args.batch_size, valid_prompt_tokens=args.valid_prompt_tokens)
    gen = torch.Generator().manual_seed(1)
    actions = torch.rand(args.batch_size, config.action_horizon, config.action_dim, generator=gen) * 2 - 1
    return observation.to(args.device), actions.to(args.device)


def run_case(size: str, case: Case, args: Args) -> CaseResult:
    """Times ``args.steps`` training steps of one case (run in a fresh process)."""
    device = torch.device(args.device)
    model_config = dataclasses.replace(
        SIZES[size],
        dtype=args.dtype,
        max_token_len=args.prompt_tokens,
        prompt_trim_multiple=16 if case.trim else None,
        token_pruning_enabled=case.pruning,
        token_prune_dedup_training=case.dedup,
        **BUDGET_RULES.get(case.budget_rule, {}),
    )
    train_config = _config.TrainConfig(name="bench", model=model_config)
    rss_before = bench_common.rss_mib()
    torch.manual_seed(0)
    model = PI0Pytorch(model_config).to(device).train()
    if case.pruning:
        model.set_token_pruner_noise_scale(args.noise_scale)
    prefix_lengths: list[int] = []
    transformer = model.paligemma_with_expert
    transformer.register_forward_pre_hook(lambda _, inputs: prefix_lengths.append(inputs[0][0].shape[1]))
    optimizer = train_config.optimizer.build(model.parameters(), lr=1e-5)
    observation, actions = _batch(model_config, args)
    times = []
    for step in range(args.warmup_steps + args.steps):
        _synchronize(device)
        start = time.perf_counter()
        memory_profile.train_step(model, optimizer, observation, actions, step)
        _synchronize(device)
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / MIB
    else:
        peak = bench_common.peak_rss_mib() - rss_before
    step_s = statistics.median(times)
    return CaseResult(size, case, step_s, args.batch_size / step_s, peak, statistics.mean(prefix_lengths))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(args: Args) -> None:
    unknown = set(args.sizes) - set(SIZES)
    if unknown:
        raise ValueError(f"Unknown sizes {sorted(unknown)}; known: {sorted(SIZES)}")
    on_cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if on_cuda else f"CPU ({torch.get_num_threads()} threads)"
    memory_label = "peak CUDA alloc (MiB)" if on_cuda else "peak RSS increase (MiB)"
    command = " ".join(["uv run scripts/bench/bench_train.py", *sys.argv[1:]])
    header = [
        f"## {time.strftime('%Y-%m-%d')} — {device_name}, {args.dtype}, batch {args.batch_size}, 3 cameras at 224x224, "
        f"{args.prompt_tokens}-token prompt ({args.valid_prompt_tokens} valid), pruner noise {args.noise_scale}, "
        f"median of {args.steps} steps after {args.warmup_steps} warm-up",
        "",
        "```",
        command,
        "```",
        "",
        "| size | pruning | prompt trim | dedup | prefix tokens | step (s) | samples/s | vs unpruned untrimmed "
        f"| vs unpruned trimmed | {memory_label} | memory vs unpruned untrimmed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    context = multiprocessing.get_context("spawn")
    for size in args.sizes:
        results = []
        for case in CASES:
            with context.Pool(1) as pool:
                results.append(pool.apply(run_case, (size, case, args)))
        base, trimmed = results[0], results[1]
        for r in results:
            rows.append(
                f"| {size} {r.case.label}| {r.prefix_tokens:.0f} | {r.step_s:.3f} | {r.samples_per_s:.2f} "
                f"| {r.samples_per_s / base.samples_per_s:.2f}x | {r.samples_per_s / trimmed.samples_per_s:.2f}x "
                f"| {r.peak_mib:.0f} | {r.peak_mib / base.peak_mib:.2f} |"
            )
            print(rows[-1], flush=True)
    results_file.write_run(args.output, command, [*header, *rows])


if __name__ == "__main__":
    main(tyro.cli(Args))

"""The device check: what full-size π0.5 costs on one GPU, measured in one short run from random bf16 weights.

    python scripts/bench/gpu_check.py                  # on the GPU machine (see docs/gpu.md): about 6 minutes
    uv run scripts/bench/gpu_check.py --dry-run        # the same code paths, tiny models on the CPU (CI runs it)

Sections, each timed on the same machine in one run (ratios are comparable; absolute numbers are this card's):

- ``sample_actions`` latency p50/p90 at batch 1, 3 cameras, the π0.5 prompt (200 columns, 20 valid, trimmed):
  unpruned, 25% and 10% kept, eager (with the prefix / denoising split) and compiled with the shape buckets (kept
  count in 16s; the graphs compiled are counted), and throughput at batch 8;
- one training step at batch 32 with gradient checkpointing: full fine-tune, LoRA, and the default pruned step
  (``LIGHTVLA_PRUNING``) against unpruned: step time and peak memory beside ``openpi.training.memory``'s estimate;
- the serving path: 16 concurrent clients over the real websocket server, batching on and off, requests/s;
- correctness: a mid-size model's actions in the device's bfloat16 and in JAX on the device, against the same
  weights in float32 on the CPU (relative error).

Needs torch, jax, flax, numpy, safetensors, sentencepiece, pillow, msgpack, tqdm, and the pure-Python wheels
``scripts/bench/gpu_wheels.sh`` downloads (tyro, websockets and their dependencies); no dataset, no network. Writes
``--output`` (``scripts/bench/results/gpu.md``; a dry run: ``outputs/gpu_check_dry_run.md``) and prints the table last.
Sections that would start after ``--time-budget-s`` are skipped and named.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench_common
import numpy as np
import torch
import tyro

from openpi.models import flops, pi0_config
from openpi.models.observation import Observation, random_observation
from openpi.models.pi0_config import Pi0Config
from openpi.models.variants import spell_variant
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.policies import libero_policy
from openpi.policies.pipeline import build_pipeline
from openpi.policies.policy import Policy
from openpi.policies.pytorch_model import PytorchPolicyModel
from openpi.serving import load_test
from openpi.serving.websocket_policy_server import WebsocketPolicyServer
from openpi.shared import normalize, results_file
from openpi.training import config as _config
from openpi.training import memory, memory_profile

GIB = 2**30
PROMPT_COLUMNS, VALID_PROMPT = 200, 20
BUDGETS: tuple[float | None, ...] = (None, 0.25, 0.10)


@dataclasses.dataclass
class Args:
    dry_run: bool = False
    """Run every section on tiny models on the CPU, in float32 (checks the code paths, not the numbers)."""
    repeats: int = 20
    """Timed calls per latency variant (after two warm-up calls)."""
    time_budget_s: float = 420.0
    """Skip the sections that would start after this many seconds."""
    output: Path | None = None
    """The results file (default: scripts/bench/results/gpu.md; a dry run: outputs/gpu_check_dry_run.md)."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """The sizes one run measures with: the real ones on a GPU, tiny ones in a dry run."""

    device: str
    dtype: str
    model: Pi0Config  # latency, serving, training
    mid: Pi0Config  # correctness
    train_batch: int
    clients: int
    requests: int
    repeats: int
    compile_backend: str

    @classmethod
    def of(cls, args: Args) -> Setup:
        if args.dry_run:
            tiny = pi0_config.tiny_config(vision_variant="tiny_112", action_horizon=10, max_token_len=PROMPT_COLUMNS)
            return cls("cpu", "float32", tiny, tiny, 2, 4, 2, 2, "eager")
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA device: run on the GPU machine, or pass --dry-run")
        full = pi0_config.Pi0Config(pi05=True, action_horizon=10, max_token_len=PROMPT_COLUMNS)
        return cls(
            "cuda", "bfloat16", full, pi0_config.mid_config(action_horizon=10), 32, 16, 5, args.repeats, "inductor"
        )


class Report:
    """The table's rows as they are measured, with the run's deadline."""

    def __init__(self, budget_s: float) -> None:
        self.rows: list[str] = []
        self.deadline = time.perf_counter() + budget_s

    def section(self, name: str, run: Callable[[], list[str]]) -> None:
        self.rows.append(f"| **{name}** | | | |")
        if time.perf_counter() > self.deadline:
            self.rows.append("| skipped: the time budget ran out | | | |")
            return
        start = time.perf_counter()
        self.rows += run()
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _observation(config: Pi0Config, batch: int, device: str) -> Observation:
    return random_observation(config, batch, valid_prompt_tokens=VALID_PROMPT).to(device)


def _budgeted(config: Pi0Config, ratio: float | None) -> Pi0Config:
    if ratio is None:
        return config
    return dataclasses.replace(
        config, token_pruning_enabled=True, token_prune_keep_ratio=ratio, token_prune_kept_multiple=16
    )


def _label(ratio: float | None) -> str:
    return "unpruned" if ratio is None else f"keep {ratio:.0%}"


def _times_ms(run: Callable[[], object], device: str, repeats: int) -> list[float]:
    times = []
    for index in range(repeats + 2):  # two warm-up calls
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        if index >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def _compiled_graphs(run: Callable[[], object]) -> int:
    """How many graphs ``run`` made ``torch.compile`` compile."""
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    run()
    return torch._dynamo.utils.counters["stats"]["unique_graphs"] - before


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency(setup: Setup) -> list[str]:
    """Eager and compiled ``sample_actions`` per budget at batch 1; throughput at batch 8."""
    config = dataclasses.replace(setup.model, dtype=setup.dtype)
    torch.manual_seed(0)
    with torch.device(setup.device):
        base = PI0Pytorch(config).eval()
    one, eight = _observation(config, 1, setup.device), _observation(config, 8, setup.device)
    rows = []
    with torch.inference_mode():
        for ratio in BUDGETS:
            model = bench_common.view(base, _budgeted(config, ratio))
            times = _times_ms(lambda model=model: model.sample_actions(one), setup.device, setup.repeats)
            split = model.last_timing_ms
            rows.append(
                f"| sample_actions, {_label(ratio)}, eager | batch 1 | {_p(times, 50):.1f} / {_p(times, 90):.1f} ms "
                f"| prefix {split['prefix_ms']:.1f} ms, denoising {split['denoise_ms']:.1f} ms |"
            )
        for ratio in BUDGETS:
            torch._dynamo.reset()  # each variant compiles from scratch; the count below is its own
            model = bench_common.view(base, _budgeted(config, ratio))
            model.compile_sampling(backend=setup.compile_backend, dynamic=False)
            first = _compiled_graphs(lambda model=model: model.sample_actions(one))
            times = _times_ms(lambda model=model: model.sample_actions(one), setup.device, setup.repeats)
            again = _compiled_graphs(lambda model=model: model.sample_actions(one))
            rows.append(
                f"| sample_actions, {_label(ratio)}, compiled | batch 1 | {_p(times, 50):.1f} / {_p(times, 90):.1f} ms "
                f"| {first} graphs at the first call, {again} more after {setup.repeats + 2} calls |"
            )
        for ratio in (None, 0.25):
            model = bench_common.view(base, _budgeted(config, ratio))
            times = _times_ms(lambda model=model: model.sample_actions(eight), setup.device, max(2, setup.repeats // 4))
            rows.append(
                f"| sample_actions, {_label(ratio)}, eager | batch 8 | {8000 / statistics.median(times):.1f} "
                "samples/s | |"
            )
    return rows


def _train_config(setup: Setup, name: str, **model_fields) -> _config.TrainConfig:
    base = _config.get_config("pi05_libero_pytorch")
    model = dataclasses.replace(setup.model, **model_fields)
    lora = "lora" in model.paligemma_variant
    return dataclasses.replace(
        base,
        name=name,
        model=model,
        batch_size=setup.train_batch,
        gradient_checkpointing=True,
        ema_decay=None,
        freeze_filter="lora" if lora else None,
        pytorch_training_precision="bfloat16" if setup.dtype == "bfloat16" else "float32",
    )


def _train_row(setup: Setup, label: str, config: _config.TrainConfig, steps: int) -> str:
    from openpi.training import trainer

    gc.collect()
    if setup.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with torch.device(setup.device):
        model = trainer.build_model(config, torch.device(setup.device), load_pretrained=False).train()
    optimizer = config.optimizer.build([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    observation = _observation(config.model, setup.train_batch, setup.device)
    actions = torch.randn(setup.train_batch, config.model.action_horizon, config.model.action_dim, device=setup.device)
    times = _times_ms(lambda: memory_profile.train_step(model, optimizer, observation, actions, 0), setup.device, steps)
    peak = f"{torch.cuda.max_memory_allocated() / GIB:.2f} GiB" if setup.device == "cuda" else "not measured on a CPU"
    estimate = memory.estimate(config, batch_size=setup.train_batch, prompt_tokens=32).total_bytes / GIB
    workload = flops.Workload(prompt_tokens=32, batch_size=setup.train_batch)
    tflops = flops.train_flops(config.model, workload, gradient_checkpointing=True).total / 1e12
    median = statistics.median(times)
    return (
        f"| training step, {label} | batch {setup.train_batch}, checkpointing | {median:.0f} ms "
        f"({tflops / median * 1e3:.1f} TFLOP/s) | peak {peak}, estimate {estimate:.2f} GiB |"
    )


def training(setup: Setup) -> list[str]:
    """Full fine-tune, LoRA, and the default pruned step, one model at a time."""
    steps = 1 if setup.device == "cpu" else 3
    lora = {"paligemma_variant": "gemma_2b_lora", "action_expert_variant": "gemma_300m_lora"}
    if setup.device == "cpu":  # the tiny model's variants with adapters
        adapted = {"lora_rank": 4, "lora_alpha": 4}
        lora = {
            "paligemma_variant": spell_variant(dataclasses.replace(setup.model.llm_config, **adapted)),
            "action_expert_variant": spell_variant(dataclasses.replace(setup.model.expert_config, **adapted)),
        }
    variants = {
        "full fine-tune": _train_config(setup, "full"),
        "LoRA": _train_config(setup, "lora", **lora),
        "default pruned (25%, gated)": _train_config(setup, "pruned", **_config.LIGHTVLA_PRUNING),
    }
    return [_train_row(setup, label, config, steps) for label, config in variants.items()]


def _serving_policy(config: Pi0Config, device: str) -> Policy:
    """A random-weight model behind the LIBERO pipeline (identity statistics), as a served checkpoint runs."""
    from openpi.envs import shapes_dataset

    torch.manual_seed(0)
    with torch.device(device):
        model = PI0Pytorch(config)
    data = libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(shapes_dataset.prepare_tokenizer()))
    created = data.create(Path("/nonexistent"), config)
    state = normalize.NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8))
    actions = normalize.NormStats(mean=np.zeros(7), std=np.ones(7), q01=-np.ones(7), q99=np.ones(7))
    pipeline = build_pipeline(created, {"state": state, "actions": actions}, from_dataset=False)
    return Policy(
        PytorchPolicyModel(model, device), input_transforms=pipeline.inputs, output_transforms=pipeline.outputs
    )


def serving(setup: Setup) -> list[str]:
    """``clients`` concurrent websocket clients against one server, batching off and on."""
    policy = _serving_policy(dataclasses.replace(setup.model, dtype=setup.dtype), setup.device)
    policy.warmup()
    rows = []
    for max_batch in (1, setup.clients):
        with WebsocketPolicyServer(policy, "127.0.0.1", 0, max_batch=max_batch).running_in_background() as port:
            result = load_test.run_load(port, setup.clients, setup.requests, check_ids=False)
        rate = result.completed / result.wall_s
        rows.append(
            f"| serving, max_batch {max_batch} | {setup.clients} clients x {setup.requests} | {rate:.1f} requests/s "
            f"| p50 {_p(list(result.latency_ms), 50):.0f} ms, mean batch {np.mean(result.batch_size):.1f}, "
            f"{len(result.errors)} errors |"
        )
    return rows


def correctness(setup: Setup) -> list[str]:
    """The mid-size model's actions from JAX-initialised weights: float32 on the CPU (the reference), the device's
    dtype in PyTorch, and JAX on its default device."""
    import jax

    from openpi.conversion.rules import convert_params
    from openpi.models.orbax_params import flatten_params
    from openpi.models_jax import params as jax_params
    from openpi.models_jax.observation import JaxObservation
    from openpi.models_jax.pi0 import Pi0

    config = dataclasses.replace(setup.mid, dtype="float32")
    tree = jax_params.init_params(config, seed=0)
    flat = {path: np.asarray(leaf) for path, leaf in flatten_params(tree).items()}
    state = {key: torch.from_numpy(np.array(value)) for key, value in convert_params(flat, config)}
    reference = PI0Pytorch(config).eval()
    reference.load_state_dict(state, strict=True)
    observation = random_observation(config, 2, valid_prompt_tokens=VALID_PROMPT)
    noise = torch.randn(2, config.action_horizon, config.action_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = reference.sample_actions(observation, noise=noise)
        device_model = PI0Pytorch(dataclasses.replace(config, dtype=setup.dtype)).eval()
        device_model.load_state_dict(state, strict=False)
        device_model = device_model.to(setup.device)
        if setup.dtype == "bfloat16":
            device_model.to_bfloat16()
        ours = device_model.sample_actions(observation.to(setup.device), noise=noise.to(setup.device)).float().cpu()
    jax_model = Pi0(config, tree)
    jax_actions = jax_model.sample_actions(
        jax.random.key(0), JaxObservation.from_dict(observation.to_dict()), noise=noise.numpy()
    )
    jax_device = jax.devices()[0].platform
    return [
        f"| actions, mid-size, PyTorch {setup.dtype} on {setup.device} | vs PyTorch float32 on the CPU | "
        f"{_relative_error(ours.numpy(), expected.numpy()):.2e} relative | |",
        f"| actions, mid-size, JAX float32 on {jax_device} | vs PyTorch float32 on the CPU | "
        f"{_relative_error(np.asarray(jax_actions), expected.numpy()):.2e} relative | |",
    ]


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours.astype(np.float64) - reference) / np.linalg.norm(reference))


def main(args: Args) -> Path:
    setup = Setup.of(args)
    output = args.output or (
        Path("outputs/gpu_check_dry_run.md") if args.dry_run else Path(__file__).parent / "results" / "gpu.md"
    )
    device = torch.cuda.get_device_name() if setup.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    report = Report(args.time_budget_s)
    report.section("latency", lambda: latency(setup))
    report.section("training", lambda: training(setup))
    report.section("serving", lambda: serving(setup))
    report.section("correctness", lambda: correctness(setup))
    command = "python scripts/bench/gpu_check.py " + " ".join(sys.argv[1:])
    lines = [
        f"## {time.strftime('%Y-%m-%d')} — {device}, torch {torch.__version__}, {setup.dtype}"
        + (" (dry run: tiny models, not a measurement)" if args.dry_run else ""),
        "",
        "```",
        command.strip(),
        "```",
        "",
        "| what | workload | result | detail |",
        "|---|---|---|---|",
        *report.rows,
    ]
    results_file.write_run(output, command.strip(), lines)
    print("\n".join(lines[6:]))
    return output


if __name__ == "__main__":
    main(tyro.cli(Args))

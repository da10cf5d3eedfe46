"""Benchmark of the JAX -> PyTorch converter on a synthetic full-size π0.5 checkpoint.

Writes random bfloat16 weights in the published orbax layout (about 7 GB at full size) to a scratch folder, runs
``examples/convert_jax_model_to_pytorch.py`` on it in a child process, and reports the child's wall time and peak
RSS relative to the size of the written ``model.safetensors``. The scratch folder is deleted afterwards.

    uv run scripts/bench/bench_convert.py [--llm-depth 18] [--vocab-size 257152] [--workdir /tmp/...]

Smaller ``--llm-depth`` / ``--vocab-size`` give a quick run; the defaults are the real dimensions.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import tyro
from safetensors import safe_open

from openpi.conversion import rules
from openpi.models import param_layout, variants
from openpi.models.pi0_config import Pi0Config
from openpi.shared import checkpoint_files

REPO = Path(__file__).resolve().parents[2]
CONVERTER = REPO / "examples" / "convert_jax_model_to_pytorch.py"
GIB = 1024**3


@dataclasses.dataclass
class Args:
    # Layers of both Gemma towers (18 in the published model).
    llm_depth: int = 18
    # Vocabulary of the language model (257,152 in the published model).
    vocab_size: int = 257_152
    # Scratch folder for the synthetic checkpoint and the output; a fresh one under /tmp by default.
    workdir: Path | None = None
    # Where the markdown report goes.
    report: Path = REPO / "scripts" / "bench" / "results" / "convert.md"
    seed: int = 0


def bench_config(args: Args) -> Pi0Config:
    llm = dataclasses.replace(variants.get_gemma_config("gemma_2b"), depth=args.llm_depth)
    expert = dataclasses.replace(variants.get_gemma_config("gemma_300m"), depth=args.llm_depth)
    return Pi0Config(
        pi05=True,
        paligemma_variant=variants.spell_variant(llm),
        action_expert_variant=variants.spell_variant(expert),
        vocab_size=args.vocab_size,
    )


def random_bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform values in [-0.05, 0.05), filled one leading slice at a time to bound the float32 scratch."""
    out = np.empty(shape, dtype=ml_dtypes.bfloat16)
    for index in range(shape[0]):
        out[index] = ((rng.random(shape[1:], dtype=np.float32) - 0.5) * 0.1).astype(ml_dtypes.bfloat16)
    return out


def write_checkpoint(config: Pi0Config, directory: Path, seed: int) -> None:
    """Writes ``directory/params`` and, in ``directory/samples.npz``, a few small leaves to spot-check the output."""
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for path, shape in param_layout.published_shapes(config).items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = random_bf16(rng, shape)
    ocp.PyTreeCheckpointer().save((directory / "params").absolute(), {"params": tree})
    llm = tree["PaliGemma"]["llm"]
    samples = {"time_mlp_in": tree["time_mlp_in"]["kernel"], "final_norm": llm["final_norm"]["scale"]}
    np.savez(directory / "samples.npz", **{k: v.astype(np.float32) for k, v in samples.items()})


def write_checkpoint_in_child(config: Pi0Config, directory: Path, seed: int) -> None:
    """Runs :func:`write_checkpoint` in a fresh process: a process inherits its parent's peak RSS across fork and
    exec, so the converter must be started from a parent that never held the synthetic weights."""
    process = multiprocessing.get_context("spawn").Process(target=write_checkpoint, args=(config, directory, seed))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"Writing the synthetic checkpoint failed with exit code {process.exitcode}")


def run_converter(command: list[str]) -> tuple[float, int]:
    """Runs ``command``; returns its wall seconds and peak RSS in bytes (Linux ru_maxrss is in KiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"Converter failed with status {os.waitstatus_to_exitcode(status)}: {shlex.join(command)}")
    return wall, usage.ru_maxrss * 1024


def check_output(weights: Path, config: Pi0Config, samples: Mapping[str, np.ndarray]) -> None:
    expected = {t.key: (list(t.shape), t) for rule in rules.build_rules(config) for t in rule.targets}
    with safe_open(weights, "np") as f:
        if set(f.keys()) != set(expected):
            raise RuntimeError(f"Output keys differ from the layout: {sorted(set(f.keys()) ^ set(expected))[:10]}")
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if f.get_slice(key).get_shape() != expected[key][0]:
                raise RuntimeError(f"{key} has shape {f.get_slice(key).get_shape()}, expected {expected[key][0]}")
        time_in = f.get_tensor("time_mlp_in.weight")
        norm = f.get_tensor("paligemma_with_expert.paligemma.model.language_model.norm.weight")
    np.testing.assert_array_equal(time_in, samples["time_mlp_in"].T)
    np.testing.assert_array_equal(norm, samples["final_norm"])


def directory_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def write_report(path: Path, bench_command: str, convert_command: str, results: dict[str, str]) -> None:
    rows = "\n".join(f"| {name} | {value} |" for name, value in results.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# JAX -> PyTorch conversion benchmark\n\n"
        f"Measured {datetime.date.today().isoformat()} on this project's CPU machine (2 cores, 24 GiB RAM).\n\n"
        f"Command:\n\n```\n{bench_command}\n```\n\n"
        f"It writes a synthetic π0.5 orbax checkpoint (random bfloat16 weights in the published layout) and times "
        f"the converter in a child process:\n\n```\n{convert_command}\n```\n\n"
        "Peak RSS is the converter process's maximum resident set size (`ru_maxrss` from `wait4`; page cache "
        "excluded). The checkpoint is written by a separate process so that the converter does not inherit its "
        "peak. The converter holds one orbax leaf at a time (the largest, the LLM's stacked `gating_einsum`, is 2.4 GB "
        "in bfloat16) and streams tensors into the output file, so its peak stays far below the model size.\n\n"
        f"| quantity | value |\n| --- | --- |\n{rows}\n"
    )


def main(args: Args) -> None:
    config = bench_config(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_", dir="/tmp"))
    checkpoint, output = workdir / "checkpoint", workdir / "converted"
    try:
        start = time.perf_counter()
        write_checkpoint_in_child(config, checkpoint, args.seed)
        write_seconds = time.perf_counter() - start
        logging.info("Wrote the synthetic checkpoint in %.1f s", write_seconds)
        command = [sys.executable, str(CONVERTER), "--checkpoint-dir", str(checkpoint), "--output-path", str(output)]
        command += ["--precision", "bfloat16"]
        wall, peak_rss = run_converter(command)
        weights = output / checkpoint_files.WEIGHTS_FILE
        with np.load(checkpoint / "samples.npz") as samples:
            check_output(weights, config, samples)
        output_size, input_size = weights.stat().st_size, directory_size(checkpoint / "params")
        num_params = sum(math.prod(s) for s in param_layout.published_shapes(config).values())
        results = {
            "parameters": f"{num_params:,}",
            "LLM / expert depth, vocab": f"{args.llm_depth}, {args.vocab_size:,}",
            "orbax checkpoint on disk (bf16)": f"{input_size / GIB:.2f} GiB",
            "model.safetensors (bf16 + float32 exceptions)": f"{output_size / GIB:.2f} GiB",
            "conversion wall time": f"{wall:.1f} s",
            "conversion peak RSS": f"{peak_rss / GIB:.2f} GiB",
            "peak RSS / output size": f"{peak_rss / output_size:.2f}",
            "output written per second": f"{output_size / GIB / wall:.2f} GiB/s",
        }
        bench = "uv run scripts/bench/bench_convert.py " + shlex.join(sys.argv[1:])
        write_report(args.report, bench.strip(), shlex.join(command).replace(str(workdir), "$WORKDIR"), results)
        logging.info("Results: %s (report: %s)", results, args.report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(tyro.cli(Args))

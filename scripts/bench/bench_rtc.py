"""Real-time chunking's settings and cost: how closely guided RTC follows the frozen prefix per guidance clip and
schedule, and what guidance costs in sampling time against plain and trained RTC.

    uv run scripts/bench/bench_rtc.py --draws 10

A random-weight tiny π0.5 (horizon 10) samples from ``--draws`` observations with a previous chunk
uniform in [-1, 1] and a delay of 3: the frozen-prefix error is the largest |a_i - prev_i| over the first 3 actions
(0 for trained RTC, which holds them), the overlap error the mean |a_i - prev_i| from action 3 to the horizon s = 8.
Cost: the median wall time of the denoising loop (10 steps, one thread; the prefix is the same for all), on a shared
CPU: compare the rows of one run, not runs. Written into ``--output``.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import tyro

from openpi.models.observation import random_observation
from openpi.models.pi0_config import Pi0Config, RTCConfig, tiny_config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared import results_file

DELAY, HORIZON = 3, 8


@dataclasses.dataclass
class Args:
    draws: int = 10
    output: Path = Path(__file__).parent / "results" / "rtc.md"


def _model(config: Pi0Config) -> PI0Pytorch:
    model = PI0Pytorch(config).eval()
    generator = torch.Generator().manual_seed(0)
    for parameter in model.parameters():  # random everywhere: fresh adaRMS gates are zero and would hide the time
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    return model


def measure(model: PI0Pytorch, draws: int, mode: str | None) -> tuple[float, float, float]:
    """Largest frozen-prefix error, mean overlap error, median denoising ms (``mode`` None: plain sampling)."""
    frozen, overlap, times = [], [], []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(draw)
        observation = random_observation(model.config, 1, seed=draw, valid_prompt_tokens=12)
        noise = torch.randn(1, 10, model.config.action_dim, generator=generator)
        prev = torch.rand(1, 10, model.config.action_dim, generator=generator) * 2 - 1
        kwargs = {} if mode is None else {"prev_chunk": prev, "inference_delay": DELAY, "rtc_mode": mode}
        actions = model.sample_actions(observation, noise=noise, execution_horizon=HORIZON, **kwargs)
        times.append(model.last_timing_ms["denoise_ms"])
        frozen.append(float((actions[:, :DELAY] - prev[:, :DELAY]).abs().max()))
        overlap.append(float((actions[:, DELAY:HORIZON] - prev[:, DELAY:HORIZON]).abs().mean()))
    return max(frozen), statistics.fmean(overlap), statistics.median(times)


def main(args: Args) -> None:
    torch.set_num_threads(1)
    command = "uv run scripts/bench/bench_rtc.py " + " ".join(sys.argv[1:])
    lines = [
        f"## {time.strftime('%Y-%m-%d')}, CPU, one thread: {args.draws} draws",
        "",
        "```",
        command,
        "```",
        "",
        f"Random-weight tiny π0.5 (horizon 10, 10 flow steps), previous chunk uniform in [-1, 1], d = {DELAY}, "
        f"s = {HORIZON}. Frozen: max |a - prev| over the first d actions; overlap: mean |a - prev| over actions "
        "d..s-1. Denoising time: median over the draws, one thread on a shared CPU (compare rows, not runs).",
        "",
        "| sampling | frozen-prefix error (max) | overlap error (mean) | denoise ms (median) |",
        "|---|---|---|---|",
    ]
    arms: list[tuple[str, RTCConfig, str | None]] = [("plain (no previous chunk)", RTCConfig(), None)]
    arms += [
        (f"guided, clip {clip:g}, {schedule}", RTCConfig(max_guidance_weight=clip, prefix_attention_schedule=schedule),
         "guided")
        for clip in (1.0, 5.0, 10.0, 20.0)
        for schedule in ("exp", "linear")
    ]  # fmt: skip
    arms.append(("trained (prefix held)", RTCConfig(training_max_delay=4), "trained"))
    for name, rtc, mode in arms:
        frozen, overlap, ms = measure(_model(tiny_config(action_horizon=10, rtc=rtc)), args.draws, mode)
        lines.append(f"| {name} | {frozen:.3f} | {overlap:.3f} | {ms:.0f} |")
        print(lines[-1], flush=True)
    results_file.write_run(args.output, command, lines)


if __name__ == "__main__":
    main(tyro.cli(Args))

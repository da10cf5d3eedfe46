"""π0-FAST on CPU: decode latency unpruned vs LightVLA budgets, against π0.5's flow sampling, and a training step of
each, at the mid size (Gemma width 512 × 8 layers, SigLIP 384 × 6, 224 px).

    uv run scripts/bench/bench_pi0_fast.py

Random weights, batch 1, two cameras (512 image tokens), a prompt of ``--prompt-tokens`` valid tokens (a LIBERO task
and its 8-dim state). π0-FAST decodes exactly ``--decode-steps`` tokens (a 10 × 7 LIBERO chunk is about 30 FAST
tokens with the universal tokenizer, plus "Action: ", "|" and EOS); π0.5 runs its 10 Euler steps. Variants are timed
round-robin on the same inputs (medians over ``--repeats``), so ratios hold on a busy machine. The table is written
into ``--output`` with the command line.
"""

from __future__ import annotations

import dataclasses
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import tyro

from openpi.models.observation import Observation, random_observation
from openpi.models.pi0_config import mid_config
from openpi.models.pi0_fast_config import Pi0FastConfig
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.shared import results_file

BUDGETS = (None, 0.25, 0.1)


@dataclasses.dataclass
class Args:
    repeats: int = 5
    decode_steps: int = 40
    prompt_tokens: int = 48
    output: Path = Path(__file__).parent / "results" / "pi0_fast.md"


def _fast_config(args: Args, keep_ratio: float | None) -> Pi0FastConfig:
    mid = mid_config()
    return Pi0FastConfig(
        paligemma_variant=mid.paligemma_variant,
        vision_variant=mid.vision_variant,
        vocab_size=mid.vocab_size,
        action_dim=7,
        action_horizon=10,
        max_token_len=args.prompt_tokens + args.decode_steps,
        dtype="float32",
        max_decoding_steps=args.decode_steps,
        token_pruning_enabled=keep_ratio is not None,
        token_prune_keep_ratio=keep_ratio,
    )


def _fast_observation(config: Pi0FastConfig, args: Args, train: bool) -> Observation:
    """Two cameras; the prompt's first ``prompt_tokens`` valid (plus the action tokens when ``train``)."""
    pi05 = dataclasses.replace(mid_config(), max_token_len=config.max_token_len, action_dim=config.action_dim)
    valid = args.prompt_tokens + (args.decode_steps if train else 0)
    obs = random_observation(pi05, num_cameras=2, valid_prompt_tokens=valid)
    length = config.max_token_len
    ar = (torch.arange(length) >= args.prompt_tokens).long()[None] * obs.tokenized_prompt_mask.long()
    return dataclasses.replace(obs, token_ar_mask=ar, token_loss_mask=ar.bool())


def _label(keep_ratio: float | None) -> str:
    return f"π0-FAST, {'unpruned' if keep_ratio is None else f'keep {keep_ratio:.0%}'}"


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def _train_step(model: torch.nn.Module, run: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        run().mean().backward()

    return step


def main(args: Args) -> None:
    torch.manual_seed(0)
    base = Pi0FastPytorch(_fast_config(args, None)).eval()
    fast_models = {
        ratio: base if ratio is None else Pi0FastPytorch(_fast_config(args, ratio)).eval() for ratio in BUDGETS
    }
    for model in fast_models.values():
        model.load_state_dict(base.state_dict())
    pi05 = PI0Pytorch(mid_config(action_dim=7, action_horizon=10, max_token_len=args.prompt_tokens)).eval()
    infer_obs = _fast_observation(base.config, args, train=False)
    pi05_obs = random_observation(pi05.config, num_cameras=2)

    def decode(model: Pi0FastPytorch) -> Callable[[], object]:
        return lambda: model.sample_tokens(infer_obs, temperature=0.0)

    with torch.no_grad():
        infer_fns = {
            f"π0-FAST, {'unpruned' if r is None else f'keep {r:.0%}'}": decode(m) for r, m in fast_models.items()
        }
        infer_fns["π0.5, 10 flow steps"] = lambda: pi05.sample_actions(pi05_obs)
        infer = _median_ms(infer_fns, args.repeats)
    steps = {name: base.sample_tokens(infer_obs).steps for name in infer_fns if name.startswith("π0-FAST")}
    train_obs = _fast_observation(base.config, args, train=True)
    actions = torch.zeros(1, 10, 7)
    base.train()
    pi05.train()
    train = _median_ms(
        {
            "π0-FAST": _train_step(base, lambda: base(train_obs)),
            "π0.5": _train_step(pi05, lambda: pi05(pi05_obs, actions)),
        },
        args.repeats,
    )
    unpruned = infer["π0-FAST, unpruned"]
    command = " ".join(["uv run scripts/bench/bench_pi0_fast.py", *sys.argv[1:]])
    lines = [
        f"## {datetime.date.today()} — mid size, CPU ({torch.get_num_threads()} threads), batch 1, 2 cameras, "
        f"{args.prompt_tokens} prompt tokens",
        "",
        "```",
        command,
        "```",
        "",
        "| inference | median ms | vs π0-FAST unpruned |",
        "|---|---|---|",
        *(f"| {name} | {ms:.0f} | {ms / unpruned:.2f}x |" for name, ms in infer.items()),
        "",
        f"π0-FAST decoded {sorted(set(steps.values()))} tokens per call.",
        "",
        "| training step (forward + backward, batch 1) | median ms |",
        "|---|---|",
        *(f"| {name} | {ms:.0f} |" for name, ms in train.items()),
    ]
    results_file.write_run(args.output, command, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))

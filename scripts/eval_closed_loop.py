"""Closed-loop evaluation of a policy on held-out shapes scenes (the pruning testbed).

    uv run scripts/eval_closed_loop.py --policy.config pi05_shapes_lightvla --policy.dir CKPT --episodes 100 --seed 0
    uv run scripts/eval_closed_loop.py ... --token-prune-keep-ratio 0.1      # serve at a 10% budget
    uv run scripts/eval_closed_loop.py ... --random-keep                     # as many patches, chosen at random
    uv run scripts/eval_closed_loop.py ... --mask-images                     # every camera masked (blind)
    uv run scripts/eval_closed_loop.py --host 127.0.0.1 --port 8000 ...      # against serve_policy.py
    uv run scripts/eval_closed_loop.py ... --inference-delay 2 --async --rtc guided   # simulated delay (docs/rtc.md)

The last line of the output is one JSON object: ``success_rate``, ``ci95`` (Wilson), ``episodes``, ``mean_steps``,
``kept_tokens_mean``, ``kept_ratio_mean``, ``target_recall``, ``target_pixel_recall``, ``target_hit_rate``,
``kept_on_object``, ``infer_ms_p50``, ``boundary_discontinuity``, ``within_chunk_discontinuity``,
``mean_control_steps``, ``control_steps_to_success``, per-camera and near/far splits, and ``prompt_swap`` with
``--prompt-swap N`` (see ``openpi.envs.rollout.summarize``).
"""

from __future__ import annotations

import json
import logging

import tyro

from openpi.cli import user_errors
from openpi.evaluation import closed_loop

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(user_errors.run(lambda: closed_loop.run(tyro.cli(closed_loop.Args)))))

"""How many FLOPs a config's sample_actions and training step take, per part of the model (vision tower, projector,
pruner, language model over the kept prefix, action expert over the denoising steps), attention included.

    uv run scripts/estimate_flops.py pi05_libero_pytorch
    uv run scripts/estimate_flops.py pi05_libero_pytorch --token-prune-keep-ratio 0.1
    uv run scripts/estimate_flops.py pi05_libero_pytorch_lightvla --token-prune-keep-tokens 64 --cameras 2

Counted from the config (nothing is built or run; see ``openpi.models.flops`` for what is counted). The last line is
one JSON object: ``prefix_gflops``, ``denoise_gflops``, ``sample_gflops``, ``train_step_gflops``.
"""

import sys

import tyro

from openpi.cli import estimate_flops

if __name__ == "__main__":
    try:
        estimate_flops.main(tyro.cli(estimate_flops.Args))
    except ValueError as e:
        sys.exit(f"error: {e}")

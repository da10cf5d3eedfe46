"""Computes the normalisation statistics of a config's dataset and writes ``norm_stats.json``.

    uv run scripts/compute_norm_stats.py --config-name pi05_libero_pytorch [--max-frames N]

Samples go through the config's pipeline up to the robot mapping (``build_pipeline(stage="robot")``); mean, std,
q01 and q99 of ``state`` and ``actions`` are written to ``assets/<config>/<asset_id>/norm_stats.json`` (or the folder
an ``AssetsConfig`` points at), where training reads them.
"""

import logging

import tyro

from openpi.cli import user_errors
from openpi.training import norm_stats

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)
    user_errors.run(lambda: tyro.cli(norm_stats.compute_and_save))

"""Computes the normalisation statistics of a config's dataset and writes ``norm_stats.json``.

    uv run scripts/compute_norm_stats.py --config-name pi05_libero_pytorch [--max-frames N] [--val-fraction F]

Samples go through the config's pipeline up to the robot mapping (``build_pipeline(stage="robot")``); mean, std,
q01 and q99 of ``state`` and ``actions`` are written to ``assets/<config>/<asset_id>/norm_stats.json`` (or the folder
an ``AssetsConfig`` points at), where training reads them: one file per dataset of a mixture, or its shared set.
``--val-fraction F`` / ``--val-episodes N`` (``--seed S``): the statistics of the training episodes of the split a
training run with the same flags holds out, where that run reads them (``<asset_id>/train_episodes_<key>/``).
"""

import logging

import tyro

from openpi.cli import compute_norm_stats, user_errors

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)
    user_errors.run(lambda: tyro.cli(compute_norm_stats.main))

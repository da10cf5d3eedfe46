"""Serves a trained policy over websocket (protocol of the published ``openpi-client``).

uv run scripts/serve_policy.py policy:checkpoint --policy.config pi05_libero_pytorch --policy.dir CKPT_DIR
uv run scripts/serve_policy.py --env LIBERO                       # the environment's default checkpoint
uv run scripts/serve_policy.py --token-prune-keep-ratio 0.25 policy:checkpoint --policy.config ... --policy.dir ...
"""

import logging
import sys

import tyro

from openpi.cli import serve_policy

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        serve_policy.serve(tyro.cli(serve_policy.Args))
    except (ValueError, FileNotFoundError) as e:  # a checkpoint or flag that cannot be served, named
        sys.exit(f"error: {e}")

"""Serves a trained policy over websocket (protocol of the published ``openpi-client``).

uv run scripts/serve_policy.py policy:checkpoint --policy.config pi05_libero_pytorch --policy.dir CKPT_DIR
uv run scripts/serve_policy.py --env LIBERO                       # the environment's default checkpoint
uv run scripts/serve_policy.py policy:checkpoint --policy.config ... --policy.dir ... --token-prune-keep-ratio 0.25
"""

import logging

from openpi.cli import serve_policy, user_errors

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    user_errors.run(lambda: serve_policy.serve(serve_policy.cli()))

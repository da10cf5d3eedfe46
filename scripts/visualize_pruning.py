"""Draws what a pruning policy keeps on a shapes scene: one PNG per camera (frame | kept patches | votes).

    uv run scripts/visualize_pruning.py --policy.config pi05_shapes_lightvla --policy.dir CKPT --env-seed 1000000000

The scene is the held-out scene ``--env-seed`` (``scripts/eval_closed_loop.py`` evaluates seeds from 1e9 on);
``--prompt-object I`` names object I instead of the scene's target (the prompt-swap picture). Prints the paths.
"""

import tyro

from openpi.cli import user_errors, visualize_pruning

if __name__ == "__main__":
    user_errors.run(lambda: visualize_pruning.draw(tyro.cli(visualize_pruning.Args)))

"""The README's main command runs as written (shortened to a few steps)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT


def _readme_train_command() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"^uv run (scripts/train_pytorch\.py .+)$", readme, flags=re.MULTILINE)
    assert len(commands) == 1, f"expected one training command in the README, found {commands}"
    return shlex.split(commands[0])


def test_readme_training_command_trains_and_checkpoints(tmp_path: Path):
    command = _readme_train_command()
    assert command[1] == "debug_pi05_lightvla"
    shorten = [
        "--num-train-steps", "4", "--save-interval", "2", "--log-interval", "2", "--no-wandb-enabled",
        "--data.num-episodes", "3", "--checkpoint-base-dir", str(tmp_path / "checkpoints"),
    ]  # fmt: skip
    env = {**os.environ, "OPENPI_DATA_HOME": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, *command, *shorten], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "Preparing the shapes dataset" in log, "the trainer prepares the testbed's dataset itself"
    assert "Enabled LightVLA-style token pruning" in log
    assert "prune/kept_tokens_overall_mean=" in log
    exp_dir = tmp_path / "checkpoints" / "debug_pi05_lightvla" / command[command.index("--exp-name") + 1]
    assert (exp_dir / "4" / "model.safetensors").is_file()

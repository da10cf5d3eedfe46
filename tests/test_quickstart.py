"""The README's commands run as a new user types them: train (shortened to a few steps), serve the checkpoint the
training wrote, drive it with the published client."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from tests.helpers.training import free_port

TRAIN_STEPS = 4


def _readme_command(pattern: str) -> list[str]:
    """The README's one ``uv run`` line matching ``pattern``, split as a shell would, without ``uv run``."""
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(rf"^uv run ({pattern}.*)$", readme, flags=re.MULTILINE)
    assert len(commands) == 1, f"expected one {pattern!r} command in the README, found {commands}"
    return shlex.split(commands[0])


def _replace(command: list[str], flag: str, value: str) -> list[str]:
    assert flag in command, f"the README's command has no {flag}: {command}"
    index = command.index(flag)
    return [*command[: index + 1], value, *command[index + 2 :]]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs the README's training command, shortened; returns its log and the step folder it wrote."""
    tmp_path = tmp_path_factory.mktemp("quickstart")
    command = _readme_command(r"scripts/train_pytorch\.py ")
    assert command[1] == "debug_pi05_lightvla"
    shorten = [
        "--num-train-steps",
        str(TRAIN_STEPS),
        "--save-interval",
        "2",
        "--log-interval",
        "2",
        "--no-wandb-enabled",
        "--checkpoint-base-dir",
        str(tmp_path / "checkpoints"),
    ]  # fmt: skip  (the dataset stays the README's: the server reads the norm stats of the data it names)
    env = {**os.environ, "OPENPI_DATA_HOME": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, *command, *shorten], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    exp_dir = tmp_path / "checkpoints" / "debug_pi05_lightvla" / command[command.index("--exp-name") + 1]
    return {"run": run, "step_dir": exp_dir / str(TRAIN_STEPS), "env": env}


def test_readme_training_command_trains_and_checkpoints(quickstart: dict):
    run = quickstart["run"]
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "Preparing the shapes dataset" in log, "the trainer prepares the testbed's dataset itself"
    assert "Enabled LightVLA-style token pruning" in log
    assert "prune/kept_tokens_overall_mean=" in log
    assert (quickstart["step_dir"] / "model.safetensors").is_file()


def test_readme_serve_and_client_commands_answer_with_the_robots_actions(quickstart: dict, tmp_path: Path):
    if shutil.which("uv") is None:
        pytest.skip("uv is needed to run the published client in its own environment")
    assert quickstart["run"].returncode == 0
    port = str(free_port())
    serve = _readme_command(r"scripts/serve_policy\.py policy:checkpoint --policy\.config debug_pi05_lightvla ")
    readme_dir = Path(serve[serve.index("--policy.dir") + 1])
    assert readme_dir.parts[-3:-1] == quickstart["step_dir"].parts[-3:-1], "the README serves the quickstart's run"
    serve = [*_replace(serve, "--policy.dir", str(quickstart["step_dir"])), "--port", port, "--pytorch-device", "cpu"]
    client = [*_readme_command(r"--no-project --with openpi-client "), "--port", port, "--num-steps", "2"]
    client_env = {k: v for k, v in quickstart["env"].items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    server_log = tmp_path / "server.log"
    with server_log.open("w") as log:
        server = subprocess.Popen([sys.executable, *serve], cwd=REPO_ROOT, env=quickstart["env"], stderr=log)
        try:  # the client is started at once: it must wait for the server to be ready
            done = subprocess.run(
                ["uv", "run", *client], cwd=REPO_ROOT, env=client_env, capture_output=True, text=True, timeout=400
            )
        finally:
            server.terminate()
            server.wait(timeout=60)
    assert done.returncode == 0, done.stderr[-3000:] + server_log.read_text()[-3000:]
    assert "Actions shape: (10, 7)" in done.stderr
    assert "'action_dim': 7" in done.stderr and "'token_prune_keep_ratio': 0.25" in done.stderr
    assert "token_prune_keep_tokens" not in done.stderr, "the metadata reports the budget in force only"

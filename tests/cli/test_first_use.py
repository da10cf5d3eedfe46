"""What a new user meets first: ``--help`` without the heavy frameworks, serve options in any order, budget flags
checked before anything loads, and one-line errors for a missing or wrong checkpoint folder."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from openpi.cli import serve_policy
from openpi.training import config as _config
from tests.helpers import REPO_ROOT
from tests.helpers.cli_help import capture_help, option_help

HEAVY_MODULES = ("torch", "jax", "lerobot", "transformers", "wandb")
# Runs a script's __main__ with the given argv and prints which heavy modules it imported.
_IMPORTS_PROBE = """
import json, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""
SERVE = ["--pytorch-device", "cpu", "policy:checkpoint", "--policy.config", "debug_pi05_lightvla", "--policy.dir"]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    path = REPO_ROOT / "scripts" / name
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, cwd=REPO_ROOT)


@pytest.mark.parametrize(
    "argv",
    [
        ["scripts/train_pytorch.py", "debug_pi05_lightvla", "--help"],
        ["scripts/train.py", "debug_pi05_lightvla", "--help"],
        ["scripts/serve_policy.py", "--help"],
        ["scripts/serve_policy.py", "policy:checkpoint", "--help"],
        ["scripts/compute_norm_stats.py", "--help"],
        ["scripts/eval_closed_loop.py", "--help"],
        ["scripts/estimate_memory.py", "--help"],
        ["scripts/merge_lora.py", "--help"],
        ["scripts/visualize_pruning.py", "--help"],
        ["examples/convert_jax_model_to_pytorch.py", "--help"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_help_imports_no_heavy_framework(argv: list[str]):
    probe = _IMPORTS_PROBE.format(heavy=HEAVY_MODULES)
    script = str(REPO_ROOT / argv[0])
    done = subprocess.run([sys.executable, "-c", probe, script, *argv[1:]], capture_output=True, text=True)
    assert "usage:" in done.stdout, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_serve_options_may_follow_the_checkpoint():
    flags = ["--port", "9001", "--skip-verify", "--batch-buckets", "1", "2", "--token-prune-keep-tokens=8"]
    checkpoint = ["policy:checkpoint", "--policy.config", "debug_pi05_lightvla", "--policy.dir", "ckpt"]
    after = serve_policy.cli([*checkpoint[:3], *flags[:3], *checkpoint[3:], *flags[3:]])
    assert after == serve_policy.cli([*flags, *checkpoint])
    assert (after.port, after.skip_verify, after.batch_buckets, after.token_prune_keep_tokens) == (
        9001,
        True,
        (1, 2),
        8,
    )
    assert after.policy == serve_policy.Checkpoint("debug_pi05_lightvla", "ckpt")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--token-prune-keep-ratio", "0.5", "--token-prune-keep-tokens", "8"], "Give one of --token-prune-keep-ratio"),
        (["--token-prune-keep-ratio", "1.5"], "--token-prune-keep-ratio is a fraction of the image tokens in (0, 1]"),
        (["--token-prune-keep-tokens", "0"], "--token-prune-keep-tokens is a count of image tokens (at least 1)"),
    ],
)
def test_a_bad_budget_is_one_error_line_before_anything_loads(tmp_path: Path, flags: list[str], message: str):
    done = _script("serve_policy.py", *SERVE, str(tmp_path / "absent"), *flags)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"error: {message}")


def test_the_flag_budget_replaces_the_configs_and_is_the_one_reported():
    model = _config.get_config("debug_pi05_lightvla").model
    assert serve_policy.budget_in_force(model) == {"token_prune_keep_ratio": 0.25}
    counted = serve_policy.with_budget(model, serve_policy.cli([*SERVE, "ckpt", "--token-prune-keep-tokens", "8"]))
    assert (counted.token_prune_keep_tokens, counted.token_prune_keep_ratio) == (8, None)
    assert serve_policy.budget_in_force(counted) == {"token_prune_keep_tokens": 8}
    union = dataclasses.replace(
        model, token_prune_keep_ratio=None, token_prune_budget_training=False, token_prune_gate_dropped_patches=False
    )
    assert serve_policy.budget_in_force(union) == {}


def test_a_missing_checkpoint_folder_says_it_does_not_exist(tmp_path: Path):
    done = _script("serve_policy.py", *SERVE, str(tmp_path / "absent"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"error: Checkpoint folder {tmp_path / 'absent'} does not exist")


def test_an_experiment_folder_gets_its_step_folders_as_the_hint(tmp_path: Path):
    for step in (100, 300, 200):
        (tmp_path / "quickstart" / str(step)).mkdir(parents=True)
    done = _script("serve_policy.py", *SERVE, str(tmp_path / "quickstart"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    steps = ", ".join(str(tmp_path / "quickstart" / str(step)) for step in (300, 200, 100))
    assert done.stderr.splitlines()[-1] == (
        f"error: {tmp_path / 'quickstart'} is an experiment folder, not a checkpoint: give one of its step folders, "
        f"the latest first: {steps}"
    )


def test_a_refused_fine_tune_is_one_line_and_leaves_no_folder(tmp_path: Path):
    done = _script("train_pytorch.py", "pi05_libero_pytorch", "--exp-name", "x", "--checkpoint-base-dir", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: Config 'pi05_libero_pytorch' fine-tunes a pretrained model")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--help"], "--port"), (["policy:checkpoint", "--help"], "--policy.dir")],
    ids=["server", "ckpt"],
)
def test_every_serve_option_has_its_own_help(argv: list[str], flag: str):
    helps = option_help(capture_help(serve_policy.cli, argv))
    assert flag in helps, "the help was not parsed"
    assert [flag for flag, text in helps.items() if not text] == []
    counts = collections.Counter(helps.values())
    assert {flag: text for flag, text in helps.items() if counts[text] > 1} == {}

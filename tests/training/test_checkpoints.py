"""Checkpoints: atomic save, crash safety, restore of weights/optimizer/RNG, pruning of old checkpoints."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from openpi.shared import normalize
from openpi.training import checkpoints


def _model_and_optimizer(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def state_of(step: int) -> checkpoints.TrainingState:
    return checkpoints.TrainingState(step=step, rng_states=[checkpoints.capture_rng_state()], scheduler={"step": step})


def test_save_and_load_roundtrip(tmp_path: Path):
    model, optimizer = _model_and_optimizer(0)
    stats = {"state": normalize.NormStats(mean=[1.0, 2.0], std=[3.0, 4.0], q01=[0.0, 0.0], q99=[5.0, 6.0])}
    path = checkpoints.save_checkpoint(tmp_path, state_of(7), model, optimizer, ("my_robot", stats))

    assert path == tmp_path / "7"
    assert checkpoints.is_complete(path)
    assert (path / "model.safetensors").is_file()
    np.testing.assert_array_equal(normalize.load(path / "assets" / "my_robot")["state"].q99, [5.0, 6.0])

    other, other_optimizer = _model_and_optimizer(1)
    state = checkpoints.load_checkpoint(path, other, other_optimizer)
    assert state.step == 7 and state.scheduler == {"step": 7}
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    saved_moments = [s["exp_avg"] for s in optimizer.state_dict()["state"].values()]
    loaded_moments = [s["exp_avg"] for s in other_optimizer.state_dict()["state"].values()]
    for a, b in zip(saved_moments, loaded_moments, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rng_state_roundtrip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in the legacy numpy state
    saved = checkpoints.capture_rng_state()
    expected = (random.random(), np.random.randn(3), torch.randn(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    checkpoints.restore_rng_state(saved)
    actual = (random.random(), np.random.randn(3), torch.randn(3))
    assert actual[0] == expected[0]
    np.testing.assert_array_equal(actual[1], expected[1])
    torch.testing.assert_close(actual[2], expected[2], rtol=0, atol=0)


def test_failed_save_leaves_no_complete_checkpoint(tmp_path: Path):
    model, optimizer = _model_and_optimizer()
    checkpoints.save_checkpoint(tmp_path, state_of(10), model, optimizer)

    def crash(_: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(tmp_path, state_of(20), model, optimizer, before_commit=crash)
    assert checkpoints.latest_complete_step(tmp_path) == 10
    assert not (tmp_path / "20").exists()


def test_killed_save_is_ignored_and_cleaned_up(tmp_path: Path):
    """A process killed mid-save (no cleanup code runs) leaves only a temporary directory that resume ignores."""
    model, optimizer = _model_and_optimizer()
    checkpoints.save_checkpoint(tmp_path, state_of(10), model, optimizer)
    pid = os.fork()
    if pid == 0:  # child: dies without running any cleanup, like a killed process
        state = checkpoints.TrainingState(step=20, rng_states=[checkpoints.capture_rng_state()])
        checkpoints.save_checkpoint(tmp_path, state, model, optimizer, before_commit=lambda _: os._exit(9))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "10"]
    assert leftovers, "the killed save should have left its temporary directory behind"
    assert (tmp_path / leftovers[0] / "model.safetensors").is_file()

    # A step-named directory without the marker (e.g. a partial copy) is not complete either.
    (tmp_path / "30").mkdir()
    (tmp_path / "30" / "model.safetensors").write_bytes(b"truncated")

    assert checkpoints.latest_complete_step(tmp_path) == 10
    removed = checkpoints.remove_incomplete(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10"]


def test_load_refuses_incomplete_checkpoint(tmp_path: Path):
    model, optimizer = _model_and_optimizer()
    path = checkpoints.save_checkpoint(tmp_path, state_of(5), model, optimizer)
    (path / checkpoints.COMPLETE_MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoints.load_checkpoint(path, model, optimizer)


def test_resaving_a_step_replaces_it(tmp_path: Path):
    model, optimizer = _model_and_optimizer(0)
    checkpoints.save_checkpoint(tmp_path, state_of(5), model, optimizer)
    newer, newer_optimizer = _model_and_optimizer(1)
    checkpoints.save_checkpoint(tmp_path, state_of(5), newer, newer_optimizer)
    loaded, _ = _model_and_optimizer(2)
    checkpoints.load_checkpoint(tmp_path / "5", loaded)
    torch.testing.assert_close(loaded[0].weight, newer[0].weight, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5"]


@pytest.mark.parametrize(
    ("keep_period", "expected"),
    [(None, [40, 50]), (20, [20, 40, 50]), (25, [40, 50])],
)
def test_prune_keeps_the_latest_two_and_multiples_of_keep_period(
    tmp_path: Path, keep_period: int | None, expected: list[int]
):
    model, optimizer = _model_and_optimizer()
    for step in (10, 20, 30, 40, 50):
        checkpoints.save_checkpoint(tmp_path, state_of(step), model, optimizer)
    checkpoints.prune_checkpoints(tmp_path, keep_period)
    assert checkpoints.complete_steps(tmp_path) == expected
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == expected


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    model, optimizer = _model_and_optimizer()
    for step in (10, 20):
        checkpoints.save_checkpoint(tmp_path, state_of(step), model, optimizer)
    assert checkpoints.verify_checkpoint(tmp_path / "20") == []
    weights_file = tmp_path / "20" / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[-64:] = bytes(64)  # complete-looking, but 64 bytes changed
    weights_file.write_bytes(bytes(data))
    assert checkpoints.latest_complete_step(tmp_path) == 20
    assert checkpoints.latest_verified_step(tmp_path) == 10
    assert f"{weights_file} does not match its checksum" in caplog.text


def test_a_missing_file_is_a_damaged_checkpoint(tmp_path: Path):
    model, optimizer = _model_and_optimizer()
    checkpoints.save_checkpoint(tmp_path, state_of(10), model, optimizer)
    (tmp_path / "10" / checkpoints.OPTIMIZER_FILENAME).unlink()
    assert checkpoints.verify_checkpoint(tmp_path / "10") == [f"{tmp_path / '10' / 'optimizer.pt'} is missing"]
    assert checkpoints.latest_verified_step(tmp_path) is None


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: _truncate(d / "model.safetensors", 200), "model.safetensors is truncated"),
        (lambda d: _truncate(d / "optimizer.pt", 300), "optimizer.pt is truncated"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda d: (d / checkpoints.TRAINING_STATE_FILENAME).unlink(), "training_state.pt is missing"),
    ],
    ids=["truncated weights", "truncated optimizer", "no weights", "no training state"],
)
def test_resume_falls_back_past_a_damaged_checkpoint_without_a_manifest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, named: str
):
    model, optimizer = _model_and_optimizer()
    for step in (10, 20):
        checkpoints.save_checkpoint(tmp_path, state_of(step), model, optimizer)
    (tmp_path / "20" / "MANIFEST.sha256.json").unlink()  # a checkpoint copied without its manifest
    assert checkpoints.latest_verified_step(tmp_path) == 20
    assert "20 has no manifest" in caplog.text
    damage(tmp_path / "20")
    assert checkpoints.latest_verified_step(tmp_path) == 10
    assert named in caplog.text and str(tmp_path / "20") in caplog.text
    checkpoints.load_checkpoint(tmp_path / "10", _model_and_optimizer(1)[0])  # the fallback loads

"""The RTC experiment: results pooled over seeds per (arm, delay), the boundary ratio to naive async, the paired
differences against synchronous execution, the refusal to mix trainings, and the driver's per-seed trainings (each
training seed its own policies, its own config seed and its own evaluations; resumable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research import training
from research.rtc import driver, report


def _result(successes: int, boundary: float, steps: int = 6000, seed: int | None = None) -> dict:
    return {
        "successes": successes,
        "episodes": 10,
        "success_rate": successes / 10,
        "mean_steps": 12.0,
        "control_steps_to_success": 14.0,
        "boundary_discontinuity": boundary,
        "within_chunk_discontinuity": 0.01,
        "train_steps": steps,
        "train_seed": seed,
    }


def test_the_table_pools_seeds_and_compares_boundaries_with_naive_async(tmp_path: Path):
    for seed in (0, 1):
        (tmp_path / f"naive_async_d2_seed{seed}.json").write_text(json.dumps(_result(5, 0.4, seed=seed)))
        (tmp_path / f"guided_rtc_d2_seed{seed}.json").write_text(json.dumps(_result(6 + seed, 0.1, seed=seed)))
    (tmp_path / "unrelated.json").write_text("{}")
    cells = report.load(tmp_path)
    assert set(cells) == {("naive_async", 2), ("guided_rtc", 2)}
    pooled = report.summary(cells["guided_rtc", 2])
    assert pooled["success"] == 13 / 20 and pooled["episodes"] == 20 and pooled["per_seed"] == [0.6, 0.7]
    rows = {line.split(" | ")[0].strip("| "): line for line in report.table(cells)[2:]}
    assert rows["guided_rtc"].rstrip(" |").endswith("0.25")  # 0.1 / 0.4
    output, plot = tmp_path / "results.md", tmp_path / "plot.png"
    report.write(tmp_path, output, plot, "uv run python -m research.rtc.driver --seeds 0 1")
    text = output.read_text()
    assert "uv run python -m research.rtc.driver --seeds 0 1" in text and plot.stat().st_size > 0
    assert "6000 training steps per policy; each seed trains its own policies" in text
    (tmp_path / "guided_rtc_d2_seed1.json").write_text(json.dumps(_result(7, 0.1, seed=0)))  # seed 0's policy
    report.write(tmp_path, output, plot, "uv run python -m research.rtc.driver --seeds 0 1")
    assert "not every policy was trained with its result's seed" in output.read_text()


def test_the_paired_table_differences_success_against_sync_per_seed_and_gives_each_seeds_boundary_ratio(tmp_path):
    for seed, (sync, guided, naive_boundary) in enumerate(((5, 8, 0.4), (6, 8, 0.2), (5, 7, 0.5))):
        (tmp_path / f"sync_d2_seed{seed}.json").write_text(json.dumps(_result(sync, 0.3)))
        (tmp_path / f"naive_async_d2_seed{seed}.json").write_text(json.dumps(_result(sync, naive_boundary)))
        (tmp_path / f"guided_rtc_d2_seed{seed}.json").write_text(json.dumps(_result(guided, 0.1)))
    (tmp_path / "guided_rtc_d4_seed0.json").write_text(json.dumps(_result(9, 0.1)))  # one seed: no interval, no row
    rows = {line.split(" | ")[1]: line for line in report.paired_table(report.load(tmp_path)) if line.startswith("| 2")}
    # guided − sync per seed: +0.3, +0.2, +0.2 -> mean 0.233, sd 0.0577, t(2 df) 4.303 -> half-width 0.143.
    assert rows["guided_rtc − sync"] == (
        "| 2 | guided_rtc − sync | 0, 1, 2 | +0.30, +0.20, +0.20 | +0.233 [+0.090, +0.377] | guided_rtc ahead "
        "| 0.25, 0.50, 0.20 |"
    )
    assert rows["naive_async − sync"].endswith("| +0.000 [+0.000, +0.000] | not shown | – |")
    assert set(rows) == {"guided_rtc − sync", "naive_async − sync"}


def test_the_report_refuses_results_of_different_training_steps_and_names_them(tmp_path: Path):
    (tmp_path / "sync_d0_seed0.json").write_text(json.dumps(_result(5, 0.3, steps=600)))
    (tmp_path / "sync_d0_seed1.json").write_text(json.dumps(_result(5, 0.3, steps=6000)))
    with pytest.raises(ValueError, match=r"600 steps: sync_d0_seed0\.json; 6000 steps: sync_d0_seed1\.json"):
        report.load(tmp_path)


def test_the_trained_policy_config_carries_rtc_the_experiments_data_and_its_training_seed(tmp_path: Path):
    args = driver.Args(steps=7, work_dir=tmp_path)
    config = driver.train_config("rtc_trained", 2, args)
    assert config.model.rtc.training_max_delay == 4 and config.model.action_horizon == 10
    assert (config.data.min_objects, config.data.max_objects) == (1, 1) and config.num_train_steps == 7
    assert config.seed == 2 and config.exp_name == "rtc_rtc_trained_seed2" and config.resume
    plain = driver.train_config("plain", 1, args)
    assert plain.model.rtc.training_max_delay == 0 and plain.seed == 1
    assert plain.checkpoint_dir != driver.train_config("plain", 0, args).checkpoint_dir
    assert driver.Args().steps == 6000


def test_each_seed_trains_its_own_policies_only_while_its_evaluations_need_them(tmp_path: Path, monkeypatch):
    args = driver.Args(seeds=(0, 1), steps=7, delays=(0, 2), work_dir=tmp_path, results_dir=tmp_path)
    assert driver.pending_trainings(args) == [("plain", 0), ("rtc_trained", 0), ("plain", 1), ("rtc_trained", 1)]
    for delay in (0, 2):
        (tmp_path / f"trained_rtc_d{delay}_seed1.json").write_text("{}")  # seed 1's trained policy is not needed
    training.record_path(tmp_path, "plain", 0).write_text("{}")
    assert driver.pending_trainings(args) == [("rtc_trained", 0), ("plain", 1)]

    def serial(pending, train, work_dir, jobs):  # the worker pool, in this process
        for arm, seed in pending:
            training.record_path(work_dir, arm, seed).write_text(json.dumps(train(arm, seed, 1)))

    def fake_train_policy(config, threads: int) -> dict:
        return {"checkpoint": str(config.checkpoint_dir), "seed": config.seed, "steps": config.num_train_steps}

    monkeypatch.setattr(driver, "train_in_workers", serial)
    monkeypatch.setattr(driver, "train_policy", fake_train_policy)
    trained = driver.train_all(args)
    assert trained[0]["rtc_trained"]["seed"] == 0 and trained[1]["plain"]["seed"] == 1
    assert trained[1]["plain"]["checkpoint"].endswith("rtc_plain_seed1") and trained[0]["plain"] == {}
    assert "rtc_trained" not in trained[1] and driver.pending_trainings(args) == []


def test_the_driver_refuses_to_resume_from_results_of_another_training(tmp_path: Path):
    args = driver.Args(seeds=(0,), steps=6000, work_dir=tmp_path, results_dir=tmp_path, output=tmp_path / "t.md")
    (tmp_path / "sync_d0_seed0.json").write_text(json.dumps(_result(5, 0.3, steps=6000, seed=0)))
    (tmp_path / "sync_d0_seed1.json").write_text(json.dumps(_result(5, 0.3, steps=6000, seed=0)))  # seed 0's policy
    (tmp_path / "sync_d1_seed0.json").write_text(json.dumps(_result(5, 0.3, steps=600, seed=0)))
    assert driver.foreign_results(args) == ["sync_d0_seed1.json", "sync_d1_seed0.json"]
    with pytest.raises(ValueError, match=r"another training \(sync_d0_seed1\.json, sync_d1_seed0\.json\)"):
        driver.main(args)
    assert not list(tmp_path.glob("train_*.json"))


def test_trainings_waiting_on_prerequisites_nobody_trains_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="wait on prerequisites"):
        training.train_in_workers([("a", 0)], driver._train, tmp_path, 1, ready=lambda arm, seed: False)

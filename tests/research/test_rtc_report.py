"""The RTC experiment's report: results pooled over seeds per (arm, delay), the boundary ratio to naive async, the
plot, and the driver's training config (the arms' model and data replaced, resumable)."""

from __future__ import annotations

import json
from pathlib import Path

from research.rtc import driver, report


def _result(successes: int, boundary: float) -> dict:
    return {
        "successes": successes,
        "episodes": 10,
        "success_rate": successes / 10,
        "mean_steps": 12.0,
        "control_steps_to_success": 14.0,
        "boundary_discontinuity": boundary,
        "within_chunk_discontinuity": 0.01,
    }


def test_the_table_pools_seeds_and_compares_boundaries_with_naive_async(tmp_path: Path):
    for seed in (0, 1):
        (tmp_path / f"naive_async_d2_seed{seed}.json").write_text(json.dumps(_result(5, 0.4)))
        (tmp_path / f"guided_rtc_d2_seed{seed}.json").write_text(json.dumps(_result(6 + seed, 0.1)))
    (tmp_path / "unrelated.json").write_text("{}")
    cells = report.load(tmp_path)
    assert set(cells) == {("naive_async", 2), ("guided_rtc", 2)}
    pooled = report.summary(cells["guided_rtc", 2])
    assert pooled["success"] == 13 / 20 and pooled["episodes"] == 20 and pooled["per_seed"] == [0.6, 0.7]
    rows = {line.split(" | ")[0].strip("| "): line for line in report.table(cells)[2:]}
    assert rows["guided_rtc"].rstrip(" |").endswith("0.25")  # 0.1 / 0.4
    output, plot = tmp_path / "results.md", tmp_path / "plot.png"
    report.write(tmp_path, output, plot, "uv run python -m research.rtc.driver --seeds 0 1")
    assert "uv run python -m research.rtc.driver --seeds 0 1" in output.read_text() and plot.stat().st_size > 0


def test_the_trained_policy_config_carries_rtc_and_the_experiments_data(tmp_path: Path):
    args = driver.Args(steps=7, work_dir=tmp_path)
    config = driver.train_config("rtc_trained", args)
    assert config.model.rtc.training_max_delay == 4 and config.model.action_horizon == 10
    assert (config.data.min_objects, config.data.max_objects) == (1, 1) and config.num_train_steps == 7
    assert driver.train_config("plain", args).model.rtc.training_max_delay == 0 and config.resume

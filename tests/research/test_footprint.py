"""The target-footprint measurement (research/lightvla/footprint.py)."""

import numpy as np
import pytest

from research.lightvla import footprint


def test_camera_footprint_counts_grazed_patches_and_scores_the_most_covered_ones():
    coverage = np.array([[0.0, 0.5, 0.05, 0.25, 0.0], [0.3, 0.0, 0.0, 0.0, 0.0]])  # target 0 touches 3 patches
    stats = footprint.camera_footprint(coverage, target=0)
    assert stats["patches"] == 3
    assert stats["below_0.10"] == pytest.approx(1 / 3) and stats["below_0.50"] == pytest.approx(2 / 3)
    assert stats["top1_recall"] == pytest.approx(1 / 3) and stats["top1_pixel_recall"] == pytest.approx(0.5 / 0.8)
    assert stats["top2_pixel_recall"] == pytest.approx(0.75 / 0.8)
    assert stats["top3_recall"] == stats["top3_pixel_recall"] == pytest.approx(1.0)


def test_measure_reports_both_cameras_over_held_out_scenes():
    stats = footprint.measure(footprint.Args(scenes=3))
    assert set(stats) == {"image", "wrist_image"}
    assert stats["image"]["patches"] >= 1 and stats["wrist_image"]["patches"] > stats["image"]["patches"]
    assert 0 < stats["image"]["top1_pixel_recall"] <= 1 and stats["image"]["top1_recall"] <= 1

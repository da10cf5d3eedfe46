"""Paired differences over training seeds (research/paired.py): shared seeds, the t-interval and the verdict."""

import pytest

from research import paired


def test_paired_difference_uses_shared_seeds_and_a_t_interval():
    # Seeds 0 and 2 are shared: differences 0.1 and 0.3, mean 0.2, standard error 0.1, t(1 df) = 12.706.
    diff = paired.paired_difference({0: 0.9, 1: 0.5, 2: 0.8}, {0: 0.8, 2: 0.5, 3: 0.1})
    assert diff.seeds == (0, 2)
    assert diff.differences == pytest.approx((0.1, 0.3))
    assert diff.mean == pytest.approx(0.2)
    assert (diff.low, diff.high) == pytest.approx((0.2 - 1.2706, 0.2 + 1.2706))


def test_paired_difference_needs_two_shared_seeds():
    assert paired.paired_difference({0: 0.9, 1: 0.5}, {1: 0.4, 2: 0.3}) is None


def test_the_verdict_names_the_better_arm_only_when_the_interval_excludes_zero():
    ahead = paired.paired_difference({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.5, 1: 0.45, 2: 0.5})
    assert paired.verdict(ahead, "arm", "base") == "arm ahead"
    assert paired.verdict(ahead, "arm", "base", lower_is_better=True) == "base faster"
    unclear = paired.paired_difference({0: 0.9, 1: 0.1}, {0: 0.5, 1: 0.5})
    assert paired.verdict(unclear, "arm", "base") == "not shown"

"""Fitting a FAST tokenizer with a held-out round-trip report."""

from __future__ import annotations

import numpy as np
import pytest

from openpi.training.fast_tokenizer_fit import fit_and_report
from tests.helpers.fast import smooth_chunks


def test_fit_reports_held_out_round_trip_error():
    chunks = smooth_chunks(120)
    fast, report = fit_and_report(chunks, vocab_size=350, held_out_fraction=0.25)
    assert (report.train_chunks, report.held_out_chunks) == (90, 30)
    assert report.vocab_size == fast.vocab_size <= 350
    assert report.held_out.failures == 0 and report.held_out.max_abs <= 0.05 * np.sqrt(10)  # rounding bound


def test_fit_refuses_a_held_out_share_that_leaves_nothing():
    with pytest.raises(ValueError, match="held_out_fraction"):
        fit_and_report(np.zeros((4, 10, 7)), held_out_fraction=1.0)

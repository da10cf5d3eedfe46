"""The FAST action tokenizer: round trip, fitting, files, and malformed sequences as named failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from openpi.models.fast_tokenizer import FastActionTokenizer, FastDecodingError, quantized_dct
from tests.helpers.fast import fitted_tokenizer, smooth_chunks


@pytest.fixture(scope="module")
def fast() -> FastActionTokenizer:
    return fitted_tokenizer()


def test_round_trip_error_is_the_rounding_error(fast):
    held_out = smooth_chunks(50, seed=1)
    error = fast.round_trip_error(held_out)
    assert error.failures == 0
    # Rounding moves each orthonormal DCT coefficient by at most 0.5 / scale; the inverse DCT is an isometry.
    assert error.max_abs <= 0.5 / fast.scale * np.sqrt(fast.action_horizon)
    assert 0 < error.mean_abs < 0.03
    # BPE compresses the 70 coefficients of a smooth chunk.
    assert error.mean_tokens < 0.7 * fast.action_horizon * fast.action_dim


def test_decode_inverts_encode_exactly_on_quantised_chunks(fast):
    chunk = smooth_chunks(1, seed=2)[0]
    decoded = fast.decode(fast.encode(decoded_once := fast.decode(fast.encode(chunk))))
    np.testing.assert_allclose(decoded, decoded_once, atol=1e-6)


def test_low_frequencies_of_every_dimension_come_first():
    chunk = np.zeros((4, 3))
    chunk[:, 1] = 1.0  # a constant in dimension 1: only its DC coefficient is non-zero
    codes = quantized_dct(chunk, 10.0).reshape(-1)
    assert codes.tolist() == [0, 20, 0] + [0] * 9


def test_fit_learns_merges_and_bounds_the_vocabulary(fast):
    assert 256 < fast.vocab_size <= 400
    assert fast.min_token < 0  # negative coefficients are offset into non-negative codes
    small = FastActionTokenizer.fit(smooth_chunks(200), vocab_size=300)
    assert small.vocab_size <= 300
    assert np.mean([len(small.encode(c)) for c in smooth_chunks(20)]) > np.mean(
        [len(fast.encode(c)) for c in smooth_chunks(20)]
    )


def test_fit_refuses_a_wrongly_shaped_dataset():
    with pytest.raises(ValueError, match="chunks"):
        FastActionTokenizer.fit(np.zeros((10, 7)))


def test_save_and_load_a_folder(fast, tmp_path: Path):
    folder = fast.save(tmp_path / "fast")
    assert json.loads((folder / "processor_config.json").read_text())["min_token"] == fast.min_token
    loaded = FastActionTokenizer.load(folder)
    chunk = smooth_chunks(1, seed=3)[0]
    assert loaded.encode(chunk) == fast.encode(chunk)
    assert (loaded.action_horizon, loaded.action_dim, loaded.scale) == (10, 7, 10.0)


def test_loading_needs_both_files(tmp_path: Path):
    (tmp_path / "processor_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        FastActionTokenizer.load(tmp_path)


@pytest.mark.parametrize("tokens", [[], [5], [0, 1, 2], list(range(200))], ids=["empty", "one", "three", "long"])
def test_sequences_of_the_wrong_length_are_decoding_failures(fast, tokens):
    with pytest.raises(FastDecodingError, match="expected 10 x 7"):
        fast.decode(tokens)


def test_ids_outside_the_vocabulary_are_decoding_failures(fast):
    tokens = fast.encode(smooth_chunks(1)[0])
    with pytest.raises(FastDecodingError, match="outside the vocabulary"):
        fast.decode([*tokens[:-1], fast.vocab_size + 3])


def test_encode_refuses_a_chunk_of_the_wrong_shape(fast):
    with pytest.raises(ValueError, match=r"\(10, 7\)"):
        fast.encode(np.zeros((10, 6)))

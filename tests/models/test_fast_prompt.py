"""π0-FAST token sequences: upstream's layout and masks (checked against the pi0_fast_tiny fixture), the PaliGemma
id mapping, and reading actions back from generated ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy

from openpi.models.fast_prompt import FastPromptTokenizer, fast_to_paligemma, paligemma_to_fast
from openpi.models.fast_tokenizer import FastDecodingError
from openpi.models.tokenizer import EOS_ID
from tests.helpers.fast import CrcTextEncoder, fitted_tokenizer, smooth_chunks

VOCAB = 1024


@pytest.fixture(scope="module")
def tokenizer() -> FastPromptTokenizer:
    return FastPromptTokenizer(CrcTextEncoder(), fitted_tokenizer(), vocab_size=VOCAB, max_len=64)


def test_action_tokens_take_the_top_of_the_vocabulary_below_128_skipped_ids():
    assert fast_to_paligemma(np.array([0, 1, 767]), VOCAB).tolist() == [895, 894, 128]
    assert paligemma_to_fast(fast_to_paligemma(np.arange(10), VOCAB), VOCAB).tolist() == list(range(10))


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_sequences_match_upstream_on_the_reference_fixture(reference_root, tokenizer, mode):
    folder = reference_root / "pi0_fast_tiny"
    io = safetensors.numpy.load_file(folder / "pi0_fast_tiny_io.safetensors")
    prompts = json.loads((folder / "pi0_fast_tiny_config.json").read_text())["tokenization"]["prompts"]
    for i, prompt in enumerate(prompts):
        fast_tokens = io["fast_action_tokens"][i][: io["fast_action_token_lens"][i]].tolist()
        seq = tokenizer.sequence(prompt, io["state"][i], fast_tokens if mode == "train" else None)
        np.testing.assert_array_equal(seq.tokens, io[f"{mode}/tokenized_prompt"][i])
        np.testing.assert_array_equal(seq.mask, io[f"{mode}/tokenized_prompt_mask"][i])
        np.testing.assert_array_equal(seq.ar_mask, io[f"{mode}/token_ar_mask"][i])
        np.testing.assert_array_equal(seq.loss_mask, io[f"{mode}/token_loss_mask"][i])


def test_prefix_is_bidirectional_without_loss_and_postfix_causal_with_loss(tokenizer):
    seq = tokenizer.tokenize("Pick_Up the cube", np.zeros(8), smooth_chunks(1)[0])
    n = int(seq.mask.sum())
    prefix_len = len(CrcTextEncoder().encode("Task: pick up the cube, State: " + "128 " * 7 + "128;\n")) + 1
    assert seq.ar_mask[:prefix_len].sum() == 0 and not seq.loss_mask[:prefix_len].any()
    assert seq.ar_mask[prefix_len:n].all() and seq.loss_mask[prefix_len:n].all()
    assert seq.tokens[n - 1] == EOS_ID and not seq.mask[n:].any() and not seq.tokens[n:].any()
    assert seq.tokens.shape == (64,)


def test_generated_actions_round_trip(tokenizer):
    chunk = smooth_chunks(1, seed=4)[0]
    seq = tokenizer.tokenize("close the drawer", np.zeros(8), chunk)
    prefix_len = int((seq.ar_mask == 0).sum() - (~seq.mask).sum())
    generated = seq.tokens[prefix_len : int(seq.mask.sum())]
    expected = tokenizer.fast.decode(tokenizer.fast.encode(chunk))
    np.testing.assert_allclose(tokenizer.extract_actions(generated), expected)
    # Without "|": the tokens up to EOS (or the end) are the actions.
    trimmed = [t for t in generated.tolist() if t != CrcTextEncoder().encode("|")[0]]
    np.testing.assert_allclose(tokenizer.extract_actions(trimmed), tokenizer.extract_actions(generated))


def test_generation_without_the_action_marker_is_a_decoding_failure(tokenizer):
    with pytest.raises(FastDecodingError, match="Action: "):
        tokenizer.extract_actions([94, 94, 94, EOS_ID])


def test_text_between_the_markers_is_a_decoding_failure(tokenizer):
    marker = CrcTextEncoder().encode("Action: ")
    with pytest.raises(FastDecodingError, match="no FAST action tokens"):
        tokenizer.extract_actions([*marker, 880, 5, EOS_ID])


def test_too_few_action_tokens_are_a_decoding_failure(tokenizer):
    marker = CrcTextEncoder().encode("Action: ")
    with pytest.raises(FastDecodingError, match="DCT coefficients"):
        tokenizer.extract_actions([*marker, 880, EOS_ID])


def test_a_fast_vocabulary_too_large_for_paligemma_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        FastPromptTokenizer(CrcTextEncoder(), fitted_tokenizer(), vocab_size=300)

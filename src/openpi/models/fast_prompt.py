"""π0-FAST's token sequences: the prompt, the state and the FAST action tokens in PaliGemma's vocabulary.

Layout (upstream's ``FASTTokenizer``)::

    [BOS] "Task: {prompt}, State: {state bins};\\n"    prefix:  bidirectional (ar 0), no loss
    "Action: " {action tokens} "|" [EOS]               postfix: causal (ar 1), with loss
    0 ...                                              padding to max_len (all masks off)

Action token ``t`` is PaliGemma id ``vocab_size - 1 - 128 - t``: FAST takes the top of the vocabulary, below the
last 128 ids. At inference the model continues the prefix; :meth:`FastPromptTokenizer.extract_actions` reads back
the tokens between "Action: " and "|".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from openpi.models.fast_tokenizer import FastActionTokenizer, FastDecodingError
from openpi.models.tokenizer import EOS_ID, PAD_ID, discretize_state

logger = logging.getLogger(__name__)

# PaliGemma ids left above the FAST range.
FAST_SKIP_TOKENS = 128
ACTION_MARKER = "Action: "
END_MARKER = "|"


class TextEncoder(Protocol):
    """What π0-FAST needs of the PaliGemma SentencePiece processor."""

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...


class FastTokens(NamedTuple):
    """One example's sequence, each ``[max_len]``."""

    tokens: np.ndarray  # int32 PaliGemma ids, 0-padded
    mask: np.ndarray  # bool, real tokens
    ar_mask: np.ndarray  # int32, 1 on the causal postfix
    loss_mask: np.ndarray  # bool, the tokens the loss predicts


def fast_to_paligemma(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """FAST tokens → PaliGemma ids ``vocab_size - 1 - 128 - t``."""
    return vocab_size - 1 - FAST_SKIP_TOKENS - np.asarray(tokens, dtype=np.int64)


def paligemma_to_fast(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """PaliGemma ids → FAST tokens (the inverse of :func:`fast_to_paligemma`)."""
    return vocab_size - 1 - FAST_SKIP_TOKENS - np.asarray(ids, dtype=np.int64)


def prefix_text(prompt: str, state: np.ndarray) -> str:
    """``"Task: {prompt}, State: {bins};\\n"``, the prompt lower-cased with underscores as spaces."""
    cleaned = prompt.lower().strip().replace("_", " ")
    bins = " ".join(str(b) for b in discretize_state(np.asarray(state).reshape(-1)))
    return f"Task: {cleaned}, State: {bins};\n"


class FastPromptTokenizer:
    """Builds π0-FAST token sequences and reads actions back from generated ids."""

    def __init__(self, text: TextEncoder, fast: FastActionTokenizer, vocab_size: int, max_len: int = 180):
        if fast.vocab_size > vocab_size - 1 - FAST_SKIP_TOKENS:
            raise ValueError(f"A FAST vocabulary of {fast.vocab_size} does not fit below PaliGemma's {vocab_size}")
        self.text, self.fast, self.vocab_size, self.max_len = text, fast, vocab_size, max_len
        self._action_marker = list(text.encode(ACTION_MARKER))
        self._end_marker = list(text.encode(END_MARKER))
        self._warned_truncation = False

    def tokenize(self, prompt: str, state: np.ndarray, actions: np.ndarray | None = None) -> FastTokens:
        """The training sequence (with normalised ``actions [H, D]``) or, without them, the inference prefix."""
        return self.sequence(prompt, state, None if actions is None else self.fast.encode(actions))

    def sequence(self, prompt: str, state: np.ndarray, fast_tokens: Sequence[int] | None) -> FastTokens:
        """The sequence of a prompt, a state and (for training) the chunk's FAST tokens."""
        prefix = list(self.text.encode(prefix_text(prompt, state), add_bos=True))
        postfix: list[int] = []
        if fast_tokens is not None:
            action_ids = fast_to_paligemma(np.asarray(fast_tokens), self.vocab_size).tolist()
            postfix = self._action_marker + action_ids + list(self.text.encode(END_MARKER, add_eos=True))
        ids = prefix + postfix
        ar = [0] * len(prefix) + [1] * len(postfix)
        if len(ids) > self.max_len:
            if not self._warned_truncation:
                logger.warning("π0-FAST sequence of %d tokens truncated to max_len=%d", len(ids), self.max_len)
                self._warned_truncation = True
            ids, ar = ids[: self.max_len], ar[: self.max_len]
        n = len(ids)
        tokens = np.full(self.max_len, PAD_ID, np.int32)
        tokens[:n] = ids
        mask = np.arange(self.max_len) < n
        ar_mask = np.zeros(self.max_len, np.int32)
        ar_mask[:n] = ar
        return FastTokens(tokens, mask, ar_mask, ar_mask.astype(bool))

    def action_ids(self, generated: Sequence[int]) -> list[int]:
        """The ids between the first "Action: " and the next "|" (or EOS, or the end) of a generated sequence.

        Raises:
            FastDecodingError: no "Action: ", or an id in that span that is no action token.
        """
        ids = [int(i) for i in generated]
        start = _find(ids, self._action_marker)
        if start < 0:
            raise FastDecodingError("The generated tokens hold no 'Action: '")
        span = ids[start + len(self._action_marker) :]
        stop = _find(span, self._end_marker)
        span = span[: stop if stop >= 0 else len(span)]
        span = span[: span.index(EOS_ID)] if EOS_ID in span else span
        low, high = self.vocab_size - FAST_SKIP_TOKENS - self.fast.vocab_size, self.vocab_size - FAST_SKIP_TOKENS
        foreign = [i for i in span if not low <= i < high]
        if foreign:
            raise FastDecodingError(f"Ids {foreign[:5]} after 'Action: ' are no FAST action tokens")
        return span

    def extract_actions(self, generated: Sequence[int]) -> np.ndarray:
        """The normalised chunk ``[H, D]`` a generated sequence encodes; raises :class:`FastDecodingError`."""
        return self.fast.decode(paligemma_to_fast(np.asarray(self.action_ids(generated)), self.vocab_size).tolist())


def _find(ids: list[int], pattern: list[int]) -> int:
    """Index of the first occurrence of ``pattern`` in ``ids``, -1 if none."""
    n = len(pattern)
    return next((i for i in range(len(ids) - n + 1) if ids[i : i + n] == pattern), -1)

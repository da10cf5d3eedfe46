"""π0-FAST test helpers: smooth action chunks, a fitted FAST tokenizer, and the reference fixture's text encoder."""

from __future__ import annotations

import re
import zlib

import numpy as np

from openpi.models.fast_tokenizer import FastActionTokenizer
from openpi.models.tokenizer import BOS_ID, EOS_ID


def smooth_chunks(num: int, horizon: int = 10, action_dim: int = 7, seed: int = 0) -> np.ndarray:
    """``[num, horizon, action_dim]`` sinusoids of random frequency and phase in [-1, 1] (robot-like, smooth)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    freq, phase = rng.uniform(0.2, 1.5, (num, 1, action_dim)), rng.uniform(0.0, 1.0, (num, 1, action_dim))
    return np.sin(2 * np.pi * (t * freq + phase))


def fitted_tokenizer(horizon: int = 10, action_dim: int = 7, vocab_size: int = 400) -> FastActionTokenizer:
    return FastActionTokenizer.fit(smooth_chunks(200, horizon, action_dim), vocab_size=vocab_size)


class CrcTextEncoder:
    """The pi0_fast_tiny fixture's stand-in for PaliGemma's SentencePiece: word/punctuation/newline pieces, each id
    ``3 + crc32(piece) % 400`` (see the fixture's README)."""

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [3 + zlib.crc32(piece.encode()) % 400 for piece in re.findall(r"\w+|[^\w\s]|\n", text)]
        return [BOS_ID] * add_bos + ids + [EOS_ID] * add_eos

"""The FAST action tokenizer (Pertsch et al., 2025): action chunks ↔ short sequences of discrete tokens.

Encoding a normalised chunk ``[H, D]``: a discrete cosine transform along time for each action dimension (orthonormal
DCT-II), the coefficients scaled (default 10) and rounded to integers, flattened time-major (the lowest frequency of
every dimension first), offset by ``min_token`` into non-negative codes written as one character each, and that
string compressed by a byte-level byte-pair encoding. Decoding inverts every step; a token sequence that does not
decode to exactly ``H × D`` coefficients raises :class:`FastDecodingError`.

A tokenizer folder holds ``tokenizer.json`` (the BPE, the ``tokenizers`` library's format) and
``processor_config.json`` (``scale``, ``min_token``, ``vocab_size`` and optionally ``time_horizon``/``action_dim``):
the layout of the published universal tokenizer, which loads from a local copy without network or remote code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers
from scipy.fft import dct, idct
from tokenizers import decoders, models, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

BPE_FILE = "tokenizer.json"
CONFIG_FILE = "processor_config.json"
DEFAULT_SCALE = 10.0


class FastDecodingError(ValueError):
    """A token sequence that is not the FAST encoding of one ``[H, D]`` action chunk."""


@dataclasses.dataclass(frozen=True)
class RoundTripError:
    """Reconstruction error of encode → decode over a set of chunks (in the chunks' normalised units)."""

    max_abs: float
    mean_abs: float
    mean_tokens: float  # tokens per chunk
    failures: int  # chunks whose tokens did not decode


@dataclasses.dataclass
class FastActionTokenizer:
    """A FAST tokenizer for chunks of ``action_horizon`` steps of ``action_dim`` values."""

    bpe: tokenizers.Tokenizer
    action_horizon: int
    action_dim: int
    scale: float = DEFAULT_SCALE
    min_token: int = 0

    @property
    def vocab_size(self) -> int:
        return self.bpe.get_vocab_size()

    # ------------------------------------------------------------------------------------------------ codec
    def encode(self, chunk: np.ndarray) -> list[int]:
        """FAST tokens of one normalised chunk ``[action_horizon, action_dim]``."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape != (self.action_horizon, self.action_dim):
            raise ValueError(
                f"FAST encodes chunks of shape ({self.action_horizon}, {self.action_dim}), got {chunk.shape}"
            )
        codes = np.maximum(quantized_dct(chunk, self.scale).reshape(-1) - self.min_token, 0)
        return self.bpe.encode(_as_text(codes)).ids

    def decode(self, tokens: Sequence[int]) -> np.ndarray:
        """The chunk ``[action_horizon, action_dim]`` (float32) that ``tokens`` encode.

        Raises:
            FastDecodingError: an id outside the vocabulary, or a sequence that is not ``H × D`` coefficients.
        """
        ids = [int(t) for t in tokens]
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise FastDecodingError(f"FAST token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        codes = np.array([ord(c) for c in self.bpe.decode(ids)], dtype=np.int64) + self.min_token
        expected = self.action_horizon * self.action_dim
        if codes.size != expected:
            raise FastDecodingError(
                f"{len(ids)} FAST tokens decode to {codes.size} DCT coefficients, expected "
                f"{self.action_horizon} x {self.action_dim} = {expected}"
            )
        coeffs = codes.reshape(self.action_horizon, self.action_dim) / self.scale
        return idct(coeffs, axis=0, norm="ortho").astype(np.float32)

    # ----------------------------------------------------------------------------------------------- files
    @classmethod
    def load(cls, folder: str | Path, action_horizon: int | None = None, action_dim: int | None = None):
        """Loads a tokenizer folder (local path only); ``action_horizon``/``action_dim`` override the folder's."""
        folder = Path(folder).expanduser()
        for name in (BPE_FILE, CONFIG_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a FAST tokenizer folder: {name} is missing")
        config = json.loads((folder / CONFIG_FILE).read_text())
        horizon = action_horizon or config.get("time_horizon")
        dim = action_dim or config.get("action_dim")
        if not horizon or not dim:
            raise ValueError(f"{folder / CONFIG_FILE} names no time_horizon/action_dim: pass action_horizon/action_dim")
        bpe = tokenizers.Tokenizer.from_file(str(folder / BPE_FILE))
        return cls(bpe, int(horizon), int(dim), float(config["scale"]), int(config["min_token"]))

    def save(self, folder: str | Path) -> Path:
        """Writes the folder that :meth:`load` reads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.bpe.save(str(folder / BPE_FILE))
        config = {
            "scale": self.scale,
            "min_token": self.min_token,
            "vocab_size": self.vocab_size,
            "time_horizon": self.action_horizon,
            "action_dim": self.action_dim,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return folder

    # ------------------------------------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, chunks: np.ndarray, vocab_size: int = 1024, scale: float = DEFAULT_SCALE) -> FastActionTokenizer:
        """Trains the BPE on normalised chunks ``[N, H, D]``; ``vocab_size`` counts the 256 byte-level symbols."""
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim != 3 or len(chunks) == 0:
            raise ValueError(f"fit needs chunks [N, horizon, action_dim] with N >= 1, got shape {chunks.shape}")
        codes = quantized_dct(chunks, scale).reshape(len(chunks), -1)  # [N, H*D]
        min_token = int(codes.min())
        if codes.max() - min_token > 0x10FFFF:
            raise ValueError(f"Scaled DCT coefficients span {codes.max() - min_token}: lower scale ({scale})")
        bpe = tokenizers.Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            show_progress=False,
            special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            max_token_length=10_000,
        )
        bpe.train_from_iterator((_as_text(row - min_token) for row in codes), trainer=trainer)
        if bpe.get_vocab_size() < vocab_size:
            logger.info("FAST BPE stopped at %d of %d tokens (no pair occurs twice)", bpe.get_vocab_size(), vocab_size)
        return cls(bpe, chunks.shape[1], chunks.shape[2], float(scale), min_token)

    def round_trip_error(self, chunks: np.ndarray) -> RoundTripError:
        """Encode → decode error over chunks ``[N, H, D]`` (held-out chunks measure the fit)."""
        errors, lengths, failures = [], [], 0
        for chunk in np.asarray(chunks):
            tokens = self.encode(chunk)
            lengths.append(len(tokens))
            try:
                errors.append(np.abs(self.decode(tokens) - chunk))
            except FastDecodingError:
                failures += 1
        stacked = np.stack(errors) if errors else np.full((1,), np.nan)
        return RoundTripError(float(stacked.max()), float(stacked.mean()), float(np.mean(lengths)), failures)


def quantized_dct(chunks: np.ndarray, scale: float) -> np.ndarray:
    """Integer DCT coefficients ``round(scale · DCT_time(chunk))`` of ``[..., H, D]`` chunks (same shape, int64)."""
    return np.around(dct(chunks, axis=-2, norm="ortho") * scale).astype(np.int64)


def _as_text(codes: np.ndarray) -> str:
    """Non-negative integer codes, one character each."""
    return "".join(map(chr, codes.tolist()))

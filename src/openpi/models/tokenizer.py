"""Prompt tokenization for π0 / π0.5 with the PaliGemma SentencePiece model, plus a trainer for small test models."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sentencepiece

from openpi.shared import download

logger = logging.getLogger(__name__)

# Special ids of the PaliGemma (Gemma) SentencePiece model.
PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3

# Environment variable that may point at the PaliGemma tokenizer when no path is given.
TOKENIZER_PATH_ENV = "OPENPI_PALIGEMMA_TOKENIZER"
PROJECT_TOKENIZER_PATH = Path("./assets/paligemma_tokenizer.model")
TOKENIZER_SOURCE_URL = "gs://big_vision/paligemma_tokenizer.model"

# π0.5 discrete state input: each state value in [-1, 1] becomes one of this many bins.
NUM_STATE_BINS = 256

_BYTE_PIECES = 256


def train_sentencepiece(texts: Iterable[str], model_prefix: str | Path, vocab_size: int) -> Path:
    """Trains a small unigram SentencePiece model with PaliGemma's special ids and returns the ``.model`` path.

    Byte fallback is on (any text encodes), digits are split, text is not normalised and newlines survive a round
    trip. ``vocab_size`` is a target: it is raised to the minimum that byte fallback and the corpus' characters need,
    and small corpora may yield fewer pieces. The same input gives the same model.
    """
    sentences = [text for text in texts if text]
    if not sentences:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    distinct_chars = {char for text in sentences for char in text}
    min_vocab_size = len(distinct_chars) + _BYTE_PIECES + 4 + 1  # chars + bytes + pad/eos/bos/unk + word boundary
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(model_prefix),
        model_type="unigram",
        vocab_size=max(vocab_size, min_vocab_size),
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        unk_id=UNK_ID,
        num_threads=1,
        minloglevel=2,
    )
    return model_prefix.with_name(model_prefix.name + ".model")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Maps state values in [-1, 1] to integer bins ``0..255`` as upstream does: values at or above the last edge
    (1 - 2/256) are 255, and values below -1 are -1 (not clipped: the published π0.5 checkpoints saw "-1")."""
    edges = np.linspace(-1.0, 1.0, NUM_STATE_BINS + 1)[:-1]
    return np.digitize(np.asarray(state, dtype=np.float64), bins=edges) - 1


def clean_prompt(prompt: str) -> str:
    """Strips the prompt and replaces underscores and newlines with spaces."""
    return prompt.strip().replace("_", " ").replace("\n", " ")


def resolve_tokenizer_path(model_path: str | Path | None) -> Path:
    """The PaliGemma SentencePiece model as an existing local file.

    ``model_path`` may be a path or a URL (``file://``, or a remote one kept in the download cache, see
    :mod:`openpi.shared.download`). Without one, tries ``$OPENPI_PALIGEMMA_TOKENIZER``, then
    ``./assets/paligemma_tokenizer.model``, then the cached copy of ``gs://big_vision/paligemma_tokenizer.model``
    (``~/.cache/openpi/big_vision/paligemma_tokenizer.model`` unless ``$OPENPI_DATA_HOME`` moves the cache).

    Raises:
        FileNotFoundError: no candidate exists.
        openpi.shared.download.DownloadError: a remote URL that is not cached could not be fetched.
    """
    if model_path is not None:
        candidates = [_local_path(str(model_path))]
    else:
        env = os.environ.get(TOKENIZER_PATH_ENV)
        cached = download.cache_path(TOKENIZER_SOURCE_URL)
        candidates = [*([_local_path(env)] if env else []), PROJECT_TOKENIZER_PATH, cached]
    for candidate in candidates:
        if candidate.expanduser().is_file():
            return candidate.expanduser()
    raise FileNotFoundError(
        f"PaliGemma tokenizer not found (tried {[str(c) for c in candidates]}). Download {TOKENIZER_SOURCE_URL} "
        f"(257,152 ids) and pass --data.tokenizer-path PATH, set ${TOKENIZER_PATH_ENV}, or put it at "
        f"{PROJECT_TOKENIZER_PATH}."
    )


def _local_path(text: str) -> Path:
    """A local path: ``file://`` stripped, a remote URL fetched into the download cache."""
    if "://" in text and not text.startswith("file://"):
        return download.maybe_download(text)
    return Path(text.removeprefix("file://"))


class PaligemmaTokenizer:
    """Tokenizes prompts (and, for π0.5, the discretised state) into fixed-length id and mask arrays."""

    def __init__(self, max_len: int = 48, model_path: str | Path | None = None) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be positive, got {max_len}")
        self.max_len = max_len
        self._given_path = model_path
        self._warned_truncation = False

    @functools.cached_property
    def model_path(self) -> Path:
        """The SentencePiece model, found at first use (a pipeline that never tokenizes never needs it)."""
        return resolve_tokenizer_path(self._given_path)

    @functools.cached_property
    def _processor(self) -> sentencepiece.SentencePieceProcessor:
        return sentencepiece.SentencePieceProcessor(model_file=str(self.model_path))

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns int32 token ids ``[max_len]`` and a bool validity mask ``[max_len]``.

        With ``state`` (π0.5 discrete state input) the text is ``"Task: {prompt}, State: {bins};\\nAction: "``;
        otherwise it is the prompt followed by a newline. BOS comes first; padding uses id 0.
        """
        cleaned = clean_prompt(prompt)
        if state is None:
            ids = self._processor.encode(cleaned, add_bos=True) + self._processor.encode("\n")
        else:
            state_str = " ".join(str(b) for b in discretize_state(np.asarray(state).reshape(-1)))
            ids = self._processor.encode(f"Task: {cleaned}, State: {state_str};\nAction: ", add_bos=True)
        return self._pad_or_truncate(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes token ids back to text (special ids are dropped)."""
        return self._processor.decode([int(i) for i in ids])

    def _pad_or_truncate(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if len(ids) > self.max_len:
            if not self._warned_truncation:
                logger.warning(
                    "Tokenized prompt has %d tokens, more than max_len=%d; truncating.", len(ids), self.max_len
                )
                self._warned_truncation = True
            ids = ids[: self.max_len]
        num_valid = len(ids)
        tokens = np.full(self.max_len, PAD_ID, dtype=np.int32)
        tokens[:num_valid] = ids
        mask = np.zeros(self.max_len, dtype=bool)
        mask[:num_valid] = True
        return tokens, mask

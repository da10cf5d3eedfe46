"""π0-FAST's side of the data pipeline: tokenizing prompt, state and actions into one sequence, and reading the action
chunks back from generated tokens (which the policy does, to report failures)."""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np
import sentencepiece

from openpi import transforms as _transforms
from openpi.models import tokenizer as _tokenizer
from openpi.models.fast_prompt import FastPromptTokenizer
from openpi.models.fast_tokenizer import FastActionTokenizer, FastDecodingError
from openpi.models.pi0_fast_config import Pi0FastConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FastTokenizerSpec:
    """Where π0-FAST's sequence tokenizer comes from: PaliGemma's SentencePiece and the FAST folder. Loaded on first
    use (and cached), so that building a pipeline reads no file."""

    model: Pi0FastConfig
    tokenizer_path: str | None
    fast_tokenizer_path: str | None

    def load(self) -> FastPromptTokenizer:
        return _load(self)


@functools.lru_cache(maxsize=8)
def _load(spec: FastTokenizerSpec) -> FastPromptTokenizer:
    if spec.fast_tokenizer_path is None:
        raise ValueError("π0-FAST needs its FAST tokenizer folder: set --model.fast-tokenizer-path")
    model = spec.model
    text = sentencepiece.SentencePieceProcessor(model_file=str(_tokenizer.resolve_tokenizer_path(spec.tokenizer_path)))
    fast = FastActionTokenizer.load(spec.fast_tokenizer_path, model.action_horizon, model.action_dim)
    return FastPromptTokenizer(text, fast, model.vocab_size, model.max_token_len)


@dataclasses.dataclass(frozen=True)
class AttendEveryCamera:
    """Marks every camera present, an absent one's (zero) image included, as upstream's π0-FAST robot mappings do
    (LIBERO, DROID: "we don't mask out padding images for FAST models"). Its checkpoints were trained so, and its
    decode window reads the last ``prefix_len`` prefix slots: a masked camera before the prompt would put that
    camera's tokens in the window in place of the first valid ones."""

    def __call__(self, data: dict) -> dict:
        if "image_mask" in data:
            data["image_mask"] = {name: np.ones_like(mask, dtype=bool) for name, mask in data["image_mask"].items()}
        return data


@dataclasses.dataclass(frozen=True)
class TokenizeFastInputs:
    """Replaces ``prompt`` (with the normalised ``state`` and, in training, ``actions``) by the π0-FAST sequence:
    ``tokenized_prompt``, ``tokenized_prompt_mask``, ``token_ar_mask``, ``token_loss_mask``."""

    spec: FastTokenizerSpec

    def __call__(self, data: dict) -> dict:
        tokenizer = self.spec.load()
        if "prompt" not in data:
            raise ValueError("Prompt is required: the observation has no 'prompt' and the policy has no default prompt")
        prompt = data.pop("prompt")
        prompt = prompt.decode() if isinstance(prompt, bytes) else str(prompt)
        actions = data.get("actions")
        if actions is not None:
            actions = _transforms.pad_to_dim(actions, tokenizer.fast.action_dim, name="actions")
            data["actions"] = actions
        seq = tokenizer.tokenize(prompt, np.asarray(data["state"]), actions)
        data["tokenized_prompt"], data["tokenized_prompt_mask"] = seq.tokens, seq.mask
        data["token_ar_mask"], data["token_loss_mask"] = seq.ar_mask, seq.loss_mask
        return data


def decode_actions(tokenizer: FastPromptTokenizer, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised chunks ``[B, H, D]`` of generated ids ``[B, S]``, and which rows failed to decode ``[B]``.

    A row that does not decode (no "Action: ", foreign ids, a wrong coefficient count) gets the all-zero chunk,
    upstream's choice: after unnormalisation the middle of each dimension's training range (quantile
    normalisation). The policy reports it as ``decoding_failed``, so that a client can hold the robot instead.
    """
    fast = tokenizer.fast
    chunks = np.zeros((len(generated), fast.action_horizon, fast.action_dim), np.float32)
    failed = np.zeros(len(generated), bool)
    for i, row in enumerate(np.asarray(generated).astype(np.int64)):
        try:
            chunks[i] = tokenizer.extract_actions(row.tolist())
        except FastDecodingError as e:
            logger.warning("π0-FAST tokens of row %d did not decode (%s): replying the zero chunk", i, e)
            failed[i] = True
    return chunks, failed

"""Tests for the PaliGemma prompt tokenizer, using a tiny SentencePiece model trained per test session."""

import logging
import re
from pathlib import Path

import fsspec
import numpy as np
import pytest
import sentencepiece

from openpi.models import tokenizer as tok
from openpi.shared import download

_VERBS = ("pick up", "put", "open", "close", "push", "move")
_OBJECTS = ("the red block", "the bowl", "the drawer", "the black mug", "the plate", "a cup")
_PLACES = ("on the table", "in the basket", "near the stove", "onto the shelf")


def _corpus() -> list[str]:
    texts = [f"{v} {o} {p}" for v in _VERBS for o in _OBJECTS for p in _PLACES]
    texts += [f"Task: {t}, State: {i} {2 * i} {255 - i};\nAction: " for i, t in enumerate(texts[:100])]
    return texts


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tok.train_sentencepiece(_corpus(), tmp_path_factory.mktemp("spm") / "tiny", vocab_size=300)


@pytest.fixture
def tokenizer(model_path: Path) -> tok.PaligemmaTokenizer:
    return tok.PaligemmaTokenizer(max_len=64, model_path=model_path)


def test_train_sentencepiece_special_ids_and_determinism(model_path: Path, tmp_path: Path) -> None:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    assert (processor.pad_id(), processor.eos_id(), processor.bos_id(), processor.unk_id()) == (0, 1, 2, 3)
    assert processor.encode("12", out_type=str) == ["1", "2"]
    assert processor.decode(processor.encode("unseen ünïcødé ✓")) == "unseen ünïcødé ✓"
    again = sentencepiece.SentencePieceProcessor(
        model_file=str(tok.train_sentencepiece(_corpus(), tmp_path / "again", vocab_size=300))
    )
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert pieces == [again.id_to_piece(i) for i in range(again.get_piece_size())]


def test_plain_prompt_has_bos_newline_and_padding(tokenizer: tok.PaligemmaTokenizer) -> None:
    ids, mask = tokenizer.tokenize("  pick_up the\nbowl  ")
    assert ids.shape == mask.shape == (64,)
    assert ids.dtype == np.int32 and mask.dtype == np.bool_
    num_valid = int(mask.sum())
    assert mask[:num_valid].all() and not mask[num_valid:].any()
    assert ids[0] == tok.BOS_ID
    assert (ids[num_valid:] == 0).all()
    assert tokenizer.decode(ids[:num_valid]) == "pick up the bowl\n"
    newline_ids = tokenizer._processor.encode("\n")
    assert list(ids[num_valid - len(newline_ids) : num_valid]) == newline_ids


def test_discrete_state_prompt_format(tokenizer: tok.PaligemmaTokenizer) -> None:
    state = np.array([-1.0, 0.0, 0.5, 0.9999, 1.0], dtype=np.float32)
    ids, mask = tokenizer.tokenize("open_the drawer", state=state)
    assert ids[0] == tok.BOS_ID
    text = tokenizer.decode(ids[mask])
    assert text == "Task: open the drawer, State: 0 128 192 255 255;\nAction: "


def test_state_bin_edges() -> None:
    bins = tok.discretize_state(np.array([-1.0, -0.999, -1 + 2 / 256, 0.0, 0.99, 1.0, 1.5, -1.5]))
    np.testing.assert_array_equal(bins, [0, 0, 1, 128, 254, 255, 255, -1])


def test_truncation_warns_once(tokenizer: tok.PaligemmaTokenizer, caplog: pytest.LogCaptureFixture) -> None:
    short = tok.PaligemmaTokenizer(max_len=5, model_path=tokenizer.model_path)
    full_ids, full_mask = tokenizer.tokenize("pick up the red block on the table")
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        ids, mask = short.tokenize("pick up the red block on the table")
        short.tokenize("pick up the red block on the table")
    assert mask.all()
    np.testing.assert_array_equal(ids, full_ids[:5])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(int(full_mask.sum())) in warnings[0].getMessage() and "5" in warnings[0].getMessage()


def test_file_url_and_vocab_size(model_path: Path) -> None:
    tokenizer = tok.PaligemmaTokenizer(max_len=8, model_path=f"file://{model_path}")
    assert tokenizer.vocab_size == sentencepiece.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()


def test_a_remote_url_is_read_through_the_download_cache(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(download.CACHE_DIR_ENV, str(tmp_path / "cache"))
    url = f"memory://tokenizers-{tmp_path.name}/tiny.model"
    fsspec.filesystem("memory").pipe(url.removeprefix("memory:/"), model_path.read_bytes())
    tokenizer = tok.PaligemmaTokenizer(max_len=8, model_path=url)
    assert tokenizer.model_path == download.cache_path(url)
    monkeypatch.delenv(tok.TOKENIZER_PATH_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(download.cache_path(tok.TOKENIZER_SOURCE_URL)))):
        tok.PaligemmaTokenizer().model_path  # noqa: B018  (found at first use)


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match=r"nope\.model") as info:
        tok.PaligemmaTokenizer(model_path=missing).model_path  # noqa: B018  (found at first use)
    assert tok.TOKENIZER_SOURCE_URL in str(info.value)


def test_default_path_comes_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tok.TOKENIZER_PATH_ENV, str(tmp_path / "from_env.model"))
    with pytest.raises(FileNotFoundError, match=r"from_env\.model"):
        tok.PaligemmaTokenizer().model_path  # noqa: B018  (found at first use)

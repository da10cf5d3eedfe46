"""openpi.cli.user_errors: a user's mistake is one error line; OPENPI_DEBUG=1 gives the traceback back."""

from __future__ import annotations

import pytest

from openpi.cli import user_errors


def _missing_folder() -> None:
    raise FileNotFoundError("Checkpoint folder ckpt does not exist")


def test_a_mistake_exits_with_one_error_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(user_errors.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        user_errors.run(_missing_folder)
    assert exit_info.value.code == "error: Checkpoint folder ckpt does not exist"


def test_debug_raises_the_mistake_with_its_traceback(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(user_errors.DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        user_errors.run(_missing_folder)


def test_other_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(user_errors.DEBUG_ENV, raising=False)

    def bug() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        user_errors.run(bug)
    assert user_errors.run(lambda: 3) == 3

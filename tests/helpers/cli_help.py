"""Reads tyro's ``--help`` output back into ``{option: help text}``, for the tests that check every option's help."""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable
from unittest import mock

_FLAG = re.compile(r"--[a-z0-9]")
_DEFAULT = re.compile(r"\s*\((default|required|fixed)[^)]*\)\s*$")


def capture_help(cli: Callable[[list[str]], object], argv: list[str]) -> str:
    """The text ``cli(argv)`` prints before exiting on ``--help`` (one column: tyro uses two on wide terminals)."""
    out = io.StringIO()
    columns = mock.patch.dict(os.environ, {"COLUMNS": "100"})
    with columns, contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli(argv)
    return out.getvalue()


def option_help(text: str) -> dict[str, str]:
    """``{"--flag": help}`` for every option in tyro's help ``text``, the ``(default: ...)`` suffix removed."""
    options: dict[str, list[str]] = {}
    current: str | None = None
    for raw in text.splitlines():
        body = raw.replace("│", " ").strip()
        indent = len(raw.replace("│", " ")) - len(raw.replace("│", " ").lstrip())
        is_flag = indent < 6 and _FLAG.match(body) is not None
        if is_flag and current is not None and not options[current]:
            continue  # the flag's negation (``--no-...``), wrapped onto its own line
        if is_flag:
            flag_part, *help_start = re.split(r"\s{2,}", body, maxsplit=1)  # short flags share their help's line
            current = flag_part.split()[0].rstrip(",")
            options[current] = help_start
        elif current is not None and indent >= 6 and body:
            options[current].append(body)
        else:
            current = None
    return {flag: _DEFAULT.sub("", " ".join(words)).strip() for flag, words in options.items()}

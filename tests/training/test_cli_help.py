"""Every training option has its own help text in ``--help`` (tyro reads it from the field's docstring)."""

from __future__ import annotations

import collections
import re

import pytest

from openpi.training import config as _config
from tests.helpers.cli_help import capture_help, option_help


def _one_config_per_data_kind() -> list[str]:
    kinds: dict[str, str] = {}
    for name in _config.list_configs():
        kinds.setdefault(type(_config.get_config(name).data).__name__, name)
    return sorted(kinds.values())


@pytest.mark.parametrize("name", _one_config_per_data_kind())
def test_every_training_option_has_its_own_help(name: str):
    helps = option_help(capture_help(_config.cli, [name, "--help"]))
    assert "--model.token-prune-keep-ratio" in helps and "--seed" in helps, "the help was not parsed"
    assert [flag for flag, text in helps.items() if not text] == []
    # A mixture repeats its datasets' options per member (--data.members.N.data.X): one option, one text.
    options_by_text = collections.defaultdict(set)
    for flag, text in helps.items():
        options_by_text[text].add(re.sub(r"members\.\d+\.(data\.)?", "", flag))
    shared = {text: options for text, options in options_by_text.items() if len(options) > 1}
    assert shared == {}


def test_budget_options_say_which_budget_they_set():
    helps = option_help(capture_help(_config.cli, ["debug_pi05_lightvla", "--help"]))
    assert "fraction" in helps["--model.token-prune-keep-ratio"]
    assert "count" in helps["--model.token-prune-keep-tokens"]

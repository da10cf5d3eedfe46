"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT

# Under pytest-xdist every worker gets its own core: more torch threads only contend with the other workers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def _shared_folder(env_var: str, name: str, marker: str) -> Path:
    """``../shared/<name>`` beside the checkout (or ``$env_var``); fails the test if ``marker`` is not in it."""
    root = Path(os.environ.get(env_var, REPO_ROOT.parent / "shared" / name))
    if not (root / marker).exists():
        pytest.fail(f"shared/{name} not found at {root}; set {env_var}")
    return root


@pytest.fixture(scope="session")
def reference_root() -> Path:
    """The reference fixtures (shared/reference/README.md)."""
    return _shared_folder("OPENPI_REFERENCE_DIR", "reference", "pi05_tiny")


@pytest.fixture(scope="session")
def layouts_root() -> Path:
    """The published checkpoint layouts (shared/layouts/README.md)."""
    return _shared_folder("OPENPI_LAYOUTS_DIR", "layouts", "reference_pytorch_state_dict.json")


@pytest.fixture(scope="session")
def embedded_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Points ``$OPENPI_DATA_HOME`` at a session-wide temporary folder (embedded dataset cache), empty at first: only
    the explicit preparation step writes there, so a test that reads the embedded data prepares it
    (``config.data.prepare()``, ``shapes_dataset.prepare``) unless it trains (the trainers prepare it)."""
    home = tmp_path_factory.mktemp("openpi_data_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENPI_DATA_HOME", str(home))
        yield home


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine (e.g. ``pytest -n 2``) more threads spin-wait and run far slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

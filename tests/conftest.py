"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist every worker gets its own core: more torch threads only contend with the other workers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference_root() -> Path:
    """The folder of reference fixtures (``../shared/reference`` beside the checkout, or $OPENPI_REFERENCE_DIR)."""
    root = Path(os.environ.get("OPENPI_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))
    if not (root / "pi05_tiny").is_dir():
        pytest.fail(f"Reference fixtures not found at {root}; set OPENPI_REFERENCE_DIR")
    return root


@pytest.fixture(scope="session")
def layouts_root() -> Path:
    root = Path(os.environ.get("OPENPI_LAYOUTS_DIR", REPO_ROOT.parent / "shared" / "layouts"))
    if not (root / "reference_pytorch_state_dict.json").is_file():
        pytest.fail(f"Checkpoint layouts not found at {root}; set OPENPI_LAYOUTS_DIR")
    return root

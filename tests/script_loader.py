"""Importing the repository's scripts and examples (plain files, not packages) in tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """Imports ``REPO/relative_path`` as a module named after its file (registered, so its dataclasses work), with
    its folder importable as when Python runs the file."""
    path = REPO / relative_path
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    loaded = sys.modules.get(path.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
        # Loading again would replace the module: objects made from the first load (e.g. a tyro-parsed dataclass,
        # whose type hints resolve through sys.modules) would stop matching the classes of the second.
        return loaded
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

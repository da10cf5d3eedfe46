"""Whether a checkpoint folder's files are the ones that were written: its manifest of checksums, and for folders
without one (older or copied checkpoints) the structure of each weights and state file.

``MANIFEST.sha256.json`` maps every file's path (relative to the folder) to its sha256; training writes it when it
commits a checkpoint and the converter when it finishes. A file that differs from its checksum or is missing is a
problem; without a manifest only structural damage can be seen: a ``.safetensors`` file whose header or length is
wrong (truncated, padded), a zip-based ``.pt`` file whose members fail their CRC, and an orbax tree's
``manifest.ocdbt`` shorter or longer than its header says.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

MANIFEST_FILE = "MANIFEST.sha256.json"
_HEADER_LIMIT = 100 * 2**20  # safetensors refuses headers above 100 MB
_OCDBT_MANIFEST = "manifest.ocdbt"
_OCDBT_MAGIC = bytes.fromhex("0cdb3a2a")


def write_manifest(directory: Path) -> Path:
    """Writes the sha256 of every file under ``directory`` into its manifest; returns the manifest's path."""
    files = (p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {str(p.relative_to(directory)): sha256(p) for p in files}
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1))
    return path


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def has_manifest(directory: Path) -> bool:
    return (Path(directory) / MANIFEST_FILE).is_file()


def manifest_problems(directory: Path, include: Callable[[str], bool] | None = None) -> list[str]:
    """The files of ``directory``'s manifest (those ``include`` accepts, default all) that are missing or differ from
    their checksum, each named; an unreadable manifest is one problem. Empty when intact."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"{path} cannot be read ({e})"]
    if not isinstance(manifest, dict):
        return [f"{path} is not a map of file names to checksums"]
    problems = []
    for name, digest in manifest.items():
        if include is not None and not include(name):
            continue
        file = directory / name
        if not file.is_file():
            problems.append(f"{file} is missing")
        elif sha256(file) != digest:
            problems.append(f"{file} does not match its checksum")
    return problems


def structural_problems(paths: Iterable[Path]) -> list[str]:
    """Damage visible without a manifest in the ``.safetensors``, ``.pt`` and ``manifest.ocdbt`` files among
    ``paths`` (folders are searched), each named."""
    problems = []
    for file in _files(paths):
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
        elif file.suffix == ".pt":
            problem = torch_archive_problem(file)
        elif file.name == _OCDBT_MANIFEST:
            problem = ocdbt_manifest_problem(file)
        else:
            continue
        if problem is not None:
            problems.append(f"{file} {problem}")
    return problems


def _files(paths: Iterable[Path]) -> list[Path]:
    found = []
    for path in paths:
        found.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return found


def safetensors_problem(file: Path) -> str | None:
    """What is wrong with a ``.safetensors`` file's header or length (truncated, padded), or None."""
    size = file.stat().st_size
    with file.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"is truncated ({size} bytes, no header)"
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _HEADER_LIMIT):
            return f"is truncated or not safetensors (header of {header_len} bytes in a file of {size})"
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "has a damaged header (not JSON)"
    if not isinstance(header, dict):
        return "has a damaged header (not a map)"
    ends = [entry.get("data_offsets", [0, 0])[1] for key, entry in header.items() if key != "__metadata__"]
    data_len = size - 8 - header_len
    expected = max(ends, default=0)
    if not all(isinstance(end, int) for end in ends) or expected != data_len:
        return f"is truncated or padded (its header describes {expected} bytes of tensors, it holds {data_len})"
    return None


def torch_archive_problem(file: Path) -> str | None:
    """What is wrong with a ``torch.save`` zip archive (truncated, a member failing its CRC), or None."""
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"is truncated or not a torch archive ({e})"
    return None if bad is None else f"has a damaged member {bad!r}"


def ocdbt_manifest_problem(file: Path) -> str | None:
    """What is wrong with an orbax (OCDBT) ``manifest.ocdbt``: a wrong magic number, or a length other than the one
    its header records (truncated); None when it looks whole."""
    size = file.stat().st_size
    with file.open("rb") as f:
        header = f.read(12)
    if len(header) < 12 or header[:4] != _OCDBT_MAGIC:
        return f"is truncated or not an OCDBT manifest ({size} bytes)"
    (length,) = struct.unpack("<Q", header[4:])
    return None if length == size else f"is truncated or damaged ({size} bytes, its header says {length})"

"""A local path for a file or folder named by a path or URL, as upstream's ``openpi.shared.download``.

Local paths and ``file://`` URLs are used where they are. A remote URL (``gs://``, ``https://``, ... through fsspec)
is kept in a cache folder, ``$OPENPI_DATA_HOME`` (default ``~/.cache/openpi``), at ``<cache>/<host>/<path>``: a copy
placed there by any means (e.g. ``gsutil cp``) is used without a connection.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import fsspec

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "OPENPI_DATA_HOME"
DEFAULT_CACHE_DIR = "~/.cache/openpi"


class DownloadError(OSError):
    """A remote URL that is not in the cache could not be fetched."""


def get_cache_dir() -> Path:
    """The cache folder (created when missing): ``$OPENPI_DATA_HOME``, else ``~/.cache/openpi``."""
    cache_dir = _cache_root()
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir


def cache_path(url: str) -> Path:
    """Where the cache keeps the remote ``url``: ``<cache>/<host>/<path>`` (whether or not it is there; creates
    nothing)."""
    parsed = urllib.parse.urlparse(url)
    return _cache_root() / parsed.netloc / parsed.path.strip("/")


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, DEFAULT_CACHE_DIR)).expanduser().resolve()


def maybe_download(url: str, *, force_download: bool = False, **kwargs: Any) -> Path:
    """The absolute local path of ``url``: a local path or ``file://`` URL itself, a remote URL's cached copy
    (fetched first when absent, or always with ``force_download``). ``kwargs`` go to fsspec (e.g.
    ``gs={"token": "anon"}``).

    Raises:
        FileNotFoundError: a local path or ``file://`` URL that does not exist.
        DownloadError: a remote URL that is not cached and cannot be fetched, naming the URL and the cache path.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else url).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"File not found at {url}")
        return path.resolve()
    local = cache_path(url)
    if local.exists() and not force_download:
        return local
    _fetch(url, local, **kwargs)
    return local


def _fetch(url: str, local: Path, **kwargs: Any) -> None:
    """Copies ``url`` (a file or a folder) to ``local`` through a scratch folder beside it, so that ``local`` only
    ever holds a complete copy."""
    local.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{local.name}.", suffix=".partial"))
    logger.info("Downloading %s to %s", url, local)
    try:
        fs, path = fsspec.core.url_to_fs(url, **kwargs)
        is_dir = fs.isdir(path)
        fs.get(path, str(scratch / local.name), recursive=is_dir)
        _remove(local)
        os.replace(scratch / local.name, local)
    except Exception as e:  # fsspec raises its backends' own errors (ImportError, OSError, HTTP errors, ...)
        raise DownloadError(
            f"Cannot download {url} ({type(e).__name__}: {e}). Copy it to {local} by other means, or pass a local "
            "path instead"
        ) from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()

"""The download cache: remote files and folders are fetched once into ``$OPENPI_DATA_HOME``; failures name the URL."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from openpi.shared import download


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(download.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bucket() -> str:
    """A fresh in-memory fsspec bucket standing in for a remote store."""
    name = f"bucket-{uuid.uuid4().hex}"
    yield name
    fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


def test_a_remote_file_and_folder_are_fetched_once_into_the_cache(cache: Path, bucket: str):
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/{bucket}/f.bin", b"v1")
    memory.pipe(f"/{bucket}/params/a", b"a")
    memory.pipe(f"/{bucket}/params/sub/b", b"b")
    local = download.maybe_download(f"memory://{bucket}/f.bin")
    assert local == cache.resolve() / bucket / "f.bin" and local.read_bytes() == b"v1"
    folder = download.maybe_download(f"memory://{bucket}/params")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["a", "sub", "sub/b"]
    memory.pipe(f"/{bucket}/f.bin", b"v2")
    assert download.maybe_download(f"memory://{bucket}/f.bin").read_bytes() == b"v1", "the cached copy"
    assert download.maybe_download(f"memory://{bucket}/f.bin", force_download=True).read_bytes() == b"v2"
    assert sorted(p.name for p in local.parent.iterdir()) == ["f.bin", "params"], "no scratch folder left"


@pytest.mark.parametrize("url", ["memory://no-such-bucket/x", "nosuchprotocol://host/x"])
def test_an_unreachable_url_is_an_error_naming_it_and_the_cache_path(cache: Path, url: str):
    with pytest.raises(download.DownloadError) as info:
        download.maybe_download(url)
    assert url in str(info.value) and str(download.cache_path(url)) in str(info.value)
    assert not download.cache_path(url).exists()

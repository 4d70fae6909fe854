"""``arrow-shm://`` backend: snapshot files in /dev/shm, mapped with ``pa.memory_map``.

Same snapshot format and reader as Plasma but no server: a version is the file
``v<seq>.arrow`` in the store directory, written under a temporary name and renamed into
place (atomic), so a reader never sees a half-written table. Every process maps the same
page-cache pages (one copy in RAM). Older files are unlinked on publish; the kernel frees
them once the last reader unmaps. Works with any pyarrow (no Plasma needed).

URI: ``arrow-shm:///dev/shm/streamscore/features`` (the store directory).
"""
from __future__ import annotations

import os
import re
import uuid

import pyarrow as pa

from connectors.feature_store import snapshot as S
from connectors.feature_store.options import StoreOptions, StoreURI
from connectors.feature_store.shm_reader import SnapshotReader, StoreGone

_VERSION = re.compile(r"^v(\d{10})\.arrow$")


def directory(uri: StoreURI) -> str:
    path = (uri.netloc + uri.path) if uri.netloc else uri.path
    if not path:
        raise ValueError(f"arrow-shm URI needs a directory: {uri.raw!r}")
    return path


def versions(path: str) -> list[int]:
    """Published versions in the store directory, oldest first."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_VERSION.match, names) if m)


def version_file(path: str, seq: int) -> str:
    return os.path.join(path, f"v{seq:010d}.arrow")


class ArrowShmFeatureStore(SnapshotReader):
    """Reader of the snapshot files in one directory."""

    scheme = "arrow-shm"

    def __init__(self, path: str, options: StoreOptions):
        super().__init__(options)
        self.path = path

    def _location(self) -> str:
        return f"arrow-shm://{self.path}"

    def _latest(self) -> int | None:
        if not os.path.isdir(self.path):
            raise StoreGone(f"directory {self.path} does not exist")
        seqs = versions(self.path)
        return seqs[-1] if seqs else None

    def _open_version(self, seq: int) -> S.Snapshot | None:
        try:
            mapped = pa.memory_map(version_file(self.path, seq), "r")
        except FileNotFoundError:
            return None  # replaced meanwhile: list again
        snap = S.Snapshot.open(mapped, source=mapped)
        snap.version = str(seq)
        return snap


def open_reader(uri: StoreURI, options: StoreOptions) -> ArrowShmFeatureStore:
    """The reader of ``arrow-shm:///dev/shm/dir``."""
    return ArrowShmFeatureStore(directory(uri), options)


def publish(uri: StoreURI, name: str, table: pa.Table, key: str, progress: S.Progress | None = None,
            lineage: str | None = None) -> str:
    """`publish_to_directory` for a store URI (the directory is the store: ``name`` is unused)."""
    return publish_to_directory(directory(uri), table, key, progress, lineage)


def publish_to_directory(path: str, table: pa.Table, key: str, progress: S.Progress | None = None,
                         lineage: str | None = None) -> str:
    """Write ``table`` as the next version in ``path``; unlink older versions. ``lineage``: the
    ``name@version`` readers report (default ``<name>@<seq>``)."""
    os.makedirs(path, exist_ok=True)
    existing = versions(path)
    seq = (existing[-1] if existing else 0) + 1
    batch = S.encode(table, key, version=str(seq), progress=progress, lineage=lineage)
    tmp = os.path.join(path, f".tmp-{uuid.uuid4().hex}")
    try:
        with pa.OSFile(tmp, "wb") as sink:
            S.write(batch, sink)
        final = version_file(path, seq)
        if os.path.exists(final):
            raise FileExistsError(f"another loader published {final} meanwhile")
        os.rename(tmp, final)  # atomic: readers see all of it or nothing
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in existing:
        try:
            os.unlink(version_file(path, old))  # mapped readers keep their pages until they switch
        except FileNotFoundError:
            pass
    return str(seq)

"""Publishing to a ``plasma://`` store: a new version is one new sealed object; older versions
are deleted (Plasma defers that until their last reader has released them). The reader is
``plasma_store``; the server process, ``connectors.embedded.plasma_server``."""
from __future__ import annotations

import time
import warnings

import pyarrow as pa

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyarrow.plasma as plasma  # noqa: E402

from connectors.feature_store import snapshot as S  # noqa: E402
from connectors.feature_store.base import FeatureStoreError, FeatureStoreUnavailable  # noqa: E402
from connectors.feature_store.options import StoreURI  # noqa: E402
from connectors.feature_store.plasma_objects import connect, object_id, quiet, socket_path, versions  # noqa: E402
from connectors.feature_store.shm_reader import StoreGone  # noqa: E402

ROOM_MARGIN = 1.02           # Plasma's allocator needs a little more than the object size
ROOM_SLACK = 4 << 20


def publish(uri: StoreURI, name: str, table: pa.Table, key: str, progress: S.Progress | None = None,
            lineage: str | None = None) -> str:
    """`publish_to_socket` for a store URI."""
    return publish_to_socket(socket_path(uri), name, table, key, progress, lineage=lineage)


@quiet
def publish_to_socket(path: str, name: str, table: pa.Table, key: str, progress: S.Progress | None = None,
                      connect_timeout_s: float = 10.0, lineage: str | None = None) -> str:
    """Write ``table`` as a new version of ``name``; returns the version (sequence number).
    Readers switch to it at their next refresh; older versions are deleted (deferred by Plasma
    until their last reader releases them). ``lineage``: the ``name@version`` readers report
    (default ``<name>@<seq>``; a registry snapshot's when materialized from the registry)."""
    client = _connect_wait(path, connect_timeout_s)
    try:
        existing = versions(client, name, sealed_only=False)
        seq = max(existing, default=0) + 1
        batch = S.encode(table, key, version=str(seq), progress=progress, lineage=lineage)
        size = S.ipc_size(batch)
        _ensure_room(client, name, size, existing)
        oid = object_id(name, seq)
        try:
            buf = client.create(oid, size)
        except plasma.PlasmaObjectExists:
            raise FeatureStoreError(f"another loader is publishing {name!r} version {seq}") from None
        except plasma.PlasmaStoreFull as exc:
            raise FeatureStoreError(f"plasma store {path} is full: {exc}") from exc
        writer = pa.FixedSizeBufferWriter(buf)
        S.write(batch, writer)
        client.seal(oid)
        del writer, buf  # releases our reference: readers keep theirs
        old = [object_id(name, s) for s in existing]
        if old:
            client.delete(old)
        return str(seq)
    finally:
        client.disconnect()


def _connect_wait(path: str, timeout_s: float) -> plasma.PlasmaClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return connect(path)
        except StoreGone as exc:
            if time.monotonic() > deadline:
                raise FeatureStoreUnavailable(str(exc)) from exc
            time.sleep(0.1)


def _ensure_room(client: plasma.PlasmaClient, name: str, size: int, existing: dict[int, dict]) -> None:
    """Refuse to publish when the new version does not fit next to the current ones: Plasma
    would otherwise evict unreferenced objects, possibly another table's current version."""
    need = int(size * ROOM_MARGIN) + ROOM_SLACK
    current = max(existing, default=None)
    stale = [object_id(name, s) for s, info in existing.items() if s != current and info["ref_count"] == 0]
    if stale:
        client.delete(stale)

    def free() -> int:
        used = sum(i["data_size"] + i["metadata_size"] for i in client.list().values())
        return client.store_capacity() - used

    if need > free():
        raise FeatureStoreError(
            f"plasma store too small: version needs ~{need >> 20} MiB, {max(free(), 0) >> 20} MiB free "
            f"of {client.store_capacity() >> 20} MiB. Size it for two versions "
            "(`streamscore features serve --memory`).")


@quiet
def delete_all(path: str, name: str) -> int:
    """Delete every version of ``name`` (deferred while readers hold them)."""
    client = connect(path)
    try:
        ids = [object_id(name, s) for s in versions(client, name, sealed_only=False)]
        if ids:
            client.delete(ids)
        return len(ids)
    finally:
        client.disconnect()

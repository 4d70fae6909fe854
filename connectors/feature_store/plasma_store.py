"""``plasma://`` backend: Arrow snapshots in a Plasma shared-memory object store (the reader).

Every reader process maps the same sealed object of the current version (one copy in shared
memory). Object naming: ``plasma_objects``; publishing: ``plasma_publish``; running the server
process: ``connectors.embedded.plasma_server`` (or ``streamscore features serve``).

URI: ``plasma:///path/to/plasma.sock?name=features``.
"""
from __future__ import annotations

import time
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyarrow.plasma as plasma  # noqa: E402  (pyarrow 11: the last line shipping Plasma)

from connectors.feature_store import snapshot as S  # noqa: E402
from connectors.feature_store.options import StoreOptions, StoreURI  # noqa: E402
from connectors.feature_store.plasma_objects import connect, object_id, quiet, socket_path, versions  # noqa: E402
from connectors.feature_store.plasma_publish import publish  # noqa: E402,F401  (the backend's publish)
from connectors.feature_store.shm_reader import SnapshotReader, StoreGone, quiet_release  # noqa: E402


class PlasmaFeatureStore(SnapshotReader):
    """Reader of one named feature table in a Plasma store."""

    scheme = "plasma"

    def __init__(self, path: str, options: StoreOptions):
        super().__init__(options)
        self.path = path
        self._client: plasma.PlasmaClient | None = None
        try:
            self._client = connect(path)
        except StoreGone:
            self._lost_at = time.monotonic()  # first lookups reconnect with back-off

    def _location(self) -> str:
        return f"plasma://{self.path}?name={self.options.name}"

    @quiet
    def _latest(self) -> int | None:
        if self._client is None:
            raise StoreGone("not connected")
        try:
            seqs = versions(self._client, self.options.name)
        except OSError as exc:  # broken pipe: the store died
            raise StoreGone(str(exc)) from exc
        return max(seqs) if seqs else None

    @quiet
    def _open_version(self, seq: int) -> S.Snapshot | None:
        assert self._client is not None
        timeout_ms = int(self.options.timeout_s * 1000)
        try:
            [buf] = self._client.get_buffers([object_id(self.options.name, seq)], timeout_ms=timeout_ms)
        except OSError as exc:
            raise StoreGone(str(exc)) from exc
        if buf is None:  # deleted meanwhile (never blocks past the timeout)
            return None
        snap = S.Snapshot.open(buf, source=buf)
        snap.version = str(seq)
        return snap

    @quiet
    def _reconnect(self) -> None:
        client = connect(self.path)
        with quiet_release():
            old, self._client = self._client, client
            self._handle = None  # a restarted store numbers versions afresh
            del old

    @quiet
    def close(self) -> None:
        super().close()
        with quiet_release():
            if self._client is not None:
                try:
                    self._client.disconnect()
                except OSError:
                    pass
                self._client = None


def open_reader(uri: StoreURI, options: StoreOptions) -> PlasmaFeatureStore:
    """The reader of ``plasma:///socket?name=...``."""
    return PlasmaFeatureStore(socket_path(uri), options)

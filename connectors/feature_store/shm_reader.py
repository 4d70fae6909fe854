"""Reader logic shared by the shared-memory stores (plasma, arrow-shm): hold one mapped
snapshot, check for a newer version every ``refresh_interval_s`` and swap atomically, and
survive store loss (reconnect with back-off, serve the held snapshot for ``stale_grace_s``)."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa

from connectors.feature_store import keys as K
from connectors.feature_store.base import FeatureStoreUnavailable
from connectors.feature_store.common import Backoff, Fetched, StoreBase, log
from connectors.feature_store.options import StoreOptions
from connectors.feature_store.snapshot import Snapshot


class StoreGone(Exception):
    """The backing store is unreachable or holds no published version."""


class SnapshotReader(StoreBase):
    """Base of the shared-memory readers; backends implement the four hooks."""

    def __init__(self, options: StoreOptions):
        super().__init__(options)
        self._snap: Snapshot | None = None
        self._handle: Any = None
        self._next_check = 0.0
        self._lost_at: float | None = None
        self._next_reconnect = 0.0
        self._backoff = Backoff(options.backoff_initial_s, options.backoff_max_s)

    # hooks -------------------------------------------------------------------------------------
    def _latest(self) -> Any:
        """Handle of the newest published version (None: none); raise StoreGone if unreachable."""
        raise NotImplementedError

    def _open_version(self, handle: Any) -> Snapshot | None:
        """Map that version (None if it vanished since `_latest`)."""
        raise NotImplementedError

    def _reconnect(self) -> None:
        """Re-establish the connection; raise StoreGone if the store is still away."""

    def _location(self) -> str:
        raise NotImplementedError

    # state machine -----------------------------------------------------------------------------
    def _refresh(self) -> None:
        for _ in range(5):  # a version can be deleted between listing and mapping: list again
            handle = self._latest()
            if handle is None:
                raise StoreGone("no version published")
            if handle == self._handle and self._snap is not None:
                return
            snap = self._open_version(handle)
            if snap is not None:
                with quiet_release():
                    old, self._snap, self._handle = self._snap, snap, handle
                    del old
                log.info("feature store %s: serving version %s (%d rows)",
                         self._location(), snap.version, snap.num_rows)
                return
        raise StoreGone("versions vanish while being opened")

    def _current(self) -> Snapshot:
        now = time.monotonic()
        snap = self._snap
        if snap is not None and now < self._next_check:
            return snap
        try:
            if self._lost_at is not None:
                if now < self._next_reconnect:
                    raise StoreGone("waiting to reconnect")
                self._reconnect()
            self._refresh()
        except StoreGone as exc:
            if self._lost_at is None:
                self._lost_at = now
                log.warning("feature store %s unavailable: %s", self._location(), exc)
            if str(exc) != "waiting to reconnect":
                self._next_reconnect = now + self._backoff.next()
            if self._snap is not None and now - self._lost_at < self.options.stale_grace_s:
                return self._snap  # immutable, complete, still mapped: keep scoring with it
            raise FeatureStoreUnavailable(f"feature store {self._location()} unavailable: {exc}") from exc
        if self._lost_at is not None:
            log.warning("feature store %s is back", self._location())
        self._lost_at = None
        self._backoff.reset()
        self._next_check = now + self.options.refresh_interval_s
        return self._snap  # type: ignore[return-value]

    def _fetch(self, keys: Any) -> Fetched:
        snap = self._current()
        if not (type(keys) is np.ndarray and keys.dtype == np.int64 and keys.ndim == 1):
            keys = K.to_query(keys, snap.index.kind)
        pos, found = snap.index.locate(keys)
        return snap.codec, snap.records.take(pos, mode="clip").view(snap.codec.dtype), found

    def lookup_numpy(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """Fast path for the common call (int64 numpy keys, one feature dtype, no refresh due):
        index arithmetic or binary search, then one row gather from the shared matrix."""
        snap = self._snap
        if (snap is not None and snap.matrix is not None and type(keys) is np.ndarray
                and keys.dtype == np.int64 and keys.ndim == 1 and time.monotonic() < self._next_check):
            if keys.size == 1:
                pos = snap.index.locate_one(keys.item())
                if pos >= 0:
                    return snap.matrix[pos:pos + 1].copy(), np.ones(1, dtype=bool)
            pos, found = snap.index.locate(keys)
            matrix = snap.matrix.take(pos, axis=0, mode="clip")
            if found.item() if found.size == 1 else found.all():
                return matrix, found
            return snap.codec.fill_missing(matrix, found, self.options.missing, self.options.defaults), found
        return super().lookup_numpy(keys)

    def refresh(self) -> None:
        """Check for a new version now (instead of at the next refresh interval)."""
        self._next_check = 0.0
        self._current()

    @property
    def schema(self) -> pa.Schema:
        return self._current_or_wait().schema

    @property
    def version(self) -> str:
        return self._current_or_wait().version

    @property
    def key(self) -> str:
        return self._current_or_wait().key

    def __len__(self) -> int:
        return self._current_or_wait().num_rows

    def _current_or_wait(self) -> Snapshot:
        from connectors.feature_store.common import retry_sync
        return retry_sync(self._current, self.options)

    def all_keys(self) -> np.ndarray:
        """Keys of the served version (for debugging tools)."""
        return self._current_or_wait().index.keys

    def close(self) -> None:
        with quiet_release():
            self._snap = None
            self._handle = None


@contextlib.contextmanager
def quiet_release():
    """Dropping a plasma buffer whose store died raises OSError inside a destructor; that is
    expected during failover, so keep it out of stderr."""
    previous = sys.unraisablehook

    def hook(info: Any) -> None:
        if isinstance(info.exc_value, OSError):
            return
        previous(info)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous

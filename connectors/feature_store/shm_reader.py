"""Reader logic shared by the shared-memory stores (plasma, arrow-shm): hold one mapped
snapshot, check for a newer version every ``refresh_interval_s`` and swap atomically, and
survive store loss: serve the held snapshot for ``stale_grace_s`` (checking again every
``refresh_interval_s``), otherwise fail fast; the next due check reconnects. Retrying a failed
lookup is the caller's (``connectors.retry``).

Hot paths: while no version check is due (one ``time.monotonic()``, a vDSO call of ~50 ns, no
syscall), a one-key lookup is pure Python index arithmetic (dense keys) or one binary search,
then a one-row slice of the mapped matrix (``lookup``: a zero-copy RecordBatch; ``lookup_numpy``:
a 128-byte copy). Every page of a version is mapped when it is opened (``prefault``), so no
lookup pays a page fault.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import sys
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa

from connectors.feature_store import keys as K
from connectors.feature_store.base import FeatureStoreUnavailable
from connectors.feature_store.common import Fetched, StoreBase, log
from connectors.feature_store.options import StoreOptions
from connectors.feature_store.snapshot import Snapshot


_TRUE1 = np.ones(1, dtype=bool)    # copied for each one-key answer: np.ones costs ~1 µs
_FALSE1 = np.zeros(1, dtype=bool)
_INT64 = np.dtype(np.int64)         # compared by identity: ~30 ns instead of ~100 for ``==``
_monotonic = time.monotonic
MADV_POPULATE_READ = 22            # Linux >= 5.14: fault in the page tables of a range


class StoreGone(Exception):
    """The backing store is unreachable or holds no published version."""


def single_int_key(keys: Any) -> int | None:
    """The key of a one-key integer query (an int64 numpy array or a one-int list), else None."""
    if type(keys) is np.ndarray:
        return keys.item() if keys.size == 1 and keys.dtype is _INT64 else None
    if type(keys) is list and len(keys) == 1 and type(keys[0]) is int:
        return keys[0]
    return None


class SnapshotReader(StoreBase):
    """Base of the shared-memory readers; backends implement the four hooks."""

    def __init__(self, options: StoreOptions):
        super().__init__(options)
        self._snap: Snapshot | None = None
        self._handle: Any = None
        self._next_check = 0.0
        self._lost_at: float | None = None
        self._missing: tuple[Snapshot, pa.RecordBatch] | None = None  # see `_missing_row`

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
                snap.lineage = snap.lineage or f"{self.options.name}@{snap.version}"
                if self.options.prefault:  # in the background: lookups go on meanwhile
                    prefault([snap.records, snap.index.keys])
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
                self._reconnect()
            self._refresh()
        except StoreGone as exc:
            if self._lost_at is None:
                self._lost_at = now
                # losing a served store is news; a store with nothing published yet says so in
                # the FeatureStoreUnavailable every lookup raises
                (log.warning if self._snap is not None else log.debug)(
                    "feature store %s unavailable: %s", self._location(), exc)
            if self._snap is not None and now - self._lost_at < self.options.stale_grace_s:
                self._next_check = now + self.options.refresh_interval_s
                return self._snap  # immutable, complete, still mapped: keep scoring with it
            raise FeatureStoreUnavailable(f"feature store {self._location()} unavailable: {exc}") from exc
        if self._lost_at is not None:
            log.warning("feature store %s is back", self._location())
        self._lost_at = None
        self._next_check = now + self.options.refresh_interval_s
        return self._snap  # type: ignore[return-value]

    def _fetch(self, keys: Any) -> Fetched:
        snap = self._current()
        if not (type(keys) is np.ndarray and keys.dtype == np.int64 and keys.ndim == 1):
            keys = K.to_query(keys, snap.index.kind)
        pos, found = snap.index.locate(keys)
        return snap.codec, snap.records.take(pos, mode="clip").view(snap.codec.dtype), found, snap.lineage

    def _fresh(self) -> Snapshot | None:
        """The held snapshot while no version check is due (no I/O at all), else None."""
        snap = self._snap
        return snap if snap is not None and _monotonic() < self._next_check else None

    def _one_key_batch(self, keys: Any) -> tuple[pa.RecordBatch, np.ndarray] | None:
        """`lookup` of one integer key without building any Arrow array, or None (general path)."""
        snap = self._fresh()
        if snap is None or snap.index.kind != K.INT:
            return None
        key = single_int_key(keys)
        if key is None:
            return None
        missing = self._missing_row(snap)
        pos = snap.index.locate_one(key)
        if pos < 0:
            return missing, _FALSE1.copy()
        row = snap.row_batch(pos)
        return None if row is None else (row, _TRUE1.copy())

    def _missing_row(self, snap: Snapshot) -> pa.RecordBatch:
        """The one-row answer for a missing key: nulls (immutable, built once per snapshot)."""
        cached = self._missing
        if cached is None or cached[0] is not snap:
            codec = snap.codec
            batch, _ = self._batch((codec, np.zeros(1, dtype=codec.dtype), _FALSE1, snap.lineage))
            cached = self._missing = (snap, batch)
        return cached[1]

    def lookup(self, keys: Any) -> tuple[pa.RecordBatch, np.ndarray]:
        """Features of ``keys`` as a RecordBatch and the found mask (one key: ~3 µs)."""
        return self._one_key_batch(keys) or super().lookup(keys)

    async def lookup_async(self, keys: Any) -> tuple[pa.RecordBatch, np.ndarray]:
        """`lookup` for asyncio callers (never waits on anything while a snapshot is held)."""
        return self._one_key_batch(keys) or await super().lookup_async(keys)

    def lookup_numpy(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """Fast path for the common call (int64 numpy keys, one feature dtype, no refresh due):
        index arithmetic or binary search, then one row gather from the shared matrix."""
        snap = self._snap
        if (snap is not None and type(keys) is np.ndarray and keys.dtype is _INT64 and keys.ndim == 1
                and snap.matrix is not None and _monotonic() < self._next_check):
            if keys.size == 1:
                pos = snap.index.locate_one(keys.item())
                if pos >= 0:
                    return snap.matrix[pos:pos + 1].copy(), _TRUE1.copy()
            pos, found = snap.index.locate(keys)
            matrix = snap.matrix.take(pos, axis=0, mode="clip")
            if found.item() if found.size == 1 else found.all():
                return matrix, found
            return snap.codec.blank_missing(matrix, found), found
        return super().lookup_numpy(keys)

    def refresh(self) -> None:
        """Check for a new version now (instead of at the next refresh interval)."""
        self._next_check = 0.0
        self._current()

    @property
    def schema(self) -> pa.Schema:
        return self._current().schema

    @property
    def version(self) -> str:
        return self._current().version

    @property
    def lineage(self) -> str:
        """``name@version`` of the served snapshot (what lookups' answers carry)."""
        return self._current().lineage

    @property
    def key(self) -> str:
        return self._current().key

    def __len__(self) -> int:
        return self._current().num_rows

    def all_keys(self) -> np.ndarray:
        """Keys of the served version (for debugging tools)."""
        return self._current().index.keys

    def close(self) -> None:
        with quiet_release():
            self._snap = None
            self._handle = None
            self._missing = None


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


PREFAULT_THREAD = "feature-store-prefault"


def prefault(arrays: list[np.ndarray]) -> None:
    """Map every page of ``arrays`` (views of a shared mapping) into this process's page tables,
    so that no lookup pays a page fault (~1-3 µs) on its row's first touch. Runs in a daemon
    thread (madvise runs without the GIL): a large table never stalls a lookup, which meanwhile
    faults in what it touches. A no-op where the kernel cannot."""
    threading.Thread(target=_populate, args=(arrays,), name=PREFAULT_THREAD, daemon=True).start()


def wait_for_prefault(timeout_s: float = 60.0) -> None:
    """Wait until the versions opened so far are mapped (benchmarks and tests measure after it)."""
    for thread in threading.enumerate():
        if thread.name == PREFAULT_THREAD:
            thread.join(timeout_s)


def _populate(arrays: list[np.ndarray]) -> None:
    libc = _libc()
    for array in arrays if libc is not None else ():
        if array.nbytes:
            start = array.ctypes.data
            aligned = start - start % mmap.PAGESIZE
            libc.madvise(aligned, start + array.nbytes - aligned, MADV_POPULATE_READ)  # EINVAL: old kernel


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None

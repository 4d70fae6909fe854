"""What every backend shares: lookup entry points, the missing-key policy and the
unavailability policy (retry with back-off, bounded by a timeout, never forever)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np
import pyarrow as pa

from connectors.feature_store.base import FeatureStoreUnavailable
from connectors.feature_store.options import StoreOptions, UnavailablePolicy
from connectors.feature_store.rows import RowCodec, check_defaults, dead_letter_mask

log = logging.getLogger("streamscore.feature_store")
T = TypeVar("T")
Fetched = tuple[RowCodec, np.ndarray, np.ndarray]  # codec, records, found


class Backoff:
    """Exponential back-off delays: initial, 2x, 4x ... capped at ``maximum``."""

    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum = initial, maximum
        self.current = initial

    def next(self) -> float:
        delay = self.current
        self.current = min(self.maximum, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.initial


def _deadline(opts: StoreOptions) -> float:
    wait = opts.wait_timeout_s if opts.unavailable is UnavailablePolicy.WAIT else 0.0
    return time.monotonic() + wait


def retry_sync(fn: Callable[[], T], opts: StoreOptions) -> T:
    """Call ``fn``; on FeatureStoreUnavailable retry with back-off while the policy allows."""
    try:
        return fn()  # the hot path: no deadline bookkeeping
    except FeatureStoreUnavailable:
        if opts.unavailable is not UnavailablePolicy.WAIT:
            raise
    deadline, backoff = _deadline(opts), Backoff(opts.backoff_initial_s, opts.backoff_max_s)
    while True:
        try:
            return fn()
        except FeatureStoreUnavailable:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(backoff.next(), left))


async def retry_async(fn: Callable[[], Awaitable[T]], opts: StoreOptions) -> T:
    """`retry_sync` for coroutines: waits with ``asyncio.sleep``, never blocking the loop."""
    try:
        return await fn()
    except FeatureStoreUnavailable:
        if opts.unavailable is not UnavailablePolicy.WAIT:
            raise
    deadline, backoff = _deadline(opts), Backoff(opts.backoff_initial_s, opts.backoff_max_s)
    while True:
        try:
            return await fn()
        except FeatureStoreUnavailable:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            await asyncio.sleep(min(backoff.next(), left))


class StoreBase:
    """Implements the `FeatureStore` protocol on top of ``_fetch`` (records of keys)."""

    scheme = "?"

    def __init__(self, options: StoreOptions):
        self.options = options

    # backends implement these -----------------------------------------------------------------
    def _fetch(self, keys: Any) -> Fetched:
        raise NotImplementedError

    async def _fetch_async(self, keys: Any) -> Fetched:
        return self._fetch(keys)  # shared memory: microseconds, fine inline on the loop

    @property
    def schema(self) -> pa.Schema:
        raise NotImplementedError

    @property
    def version(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # public API -------------------------------------------------------------------------------
    def _batch(self, fetched: Fetched) -> tuple[pa.RecordBatch, np.ndarray]:
        codec, records, found = fetched
        if self.options.defaults:
            check_defaults(codec.schema, self.options.defaults)
        return codec.to_batch(records, found, self.options.missing, self.options.defaults), found

    def _matrix(self, fetched: Fetched) -> tuple[np.ndarray, np.ndarray]:
        codec, records, found = fetched
        return codec.to_matrix(records, found, self.options.missing, self.options.defaults), found

    def lookup(self, keys: np.ndarray | pa.Array) -> tuple[pa.RecordBatch, np.ndarray]:
        """Features of ``keys`` (row-aligned, duplicates allowed) and the found mask."""
        return self._batch(retry_sync(lambda: self._fetch(keys), self.options))

    async def lookup_async(self, keys: np.ndarray | pa.Array) -> tuple[pa.RecordBatch, np.ndarray]:
        """`lookup` for asyncio callers."""
        return self._batch(await retry_async(lambda: self._fetch_async(keys), self.options))

    def lookup_numpy(self, keys: np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Features as an (n, features) matrix (all features must share one dtype): the fast
        path for models that take a float matrix. Missing rows: NaN/0, or defaults (policy)."""
        return self._matrix(retry_sync(lambda: self._fetch(keys), self.options))

    async def lookup_numpy_async(self, keys: np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        return self._matrix(await retry_async(lambda: self._fetch_async(keys), self.options))

    def dead_letter_mask(self, found: np.ndarray) -> np.ndarray:
        """Events to dead-letter with reason ``unknown_entity`` under the missing-key policy."""
        return dead_letter_mask(found, self.options.missing)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.options.name!r}>"


class CircuitBreaker:
    """Reconnect with back-off: after a failure, calls fail fast (no connect attempt, no
    timeout wait) until the next back-off delay has passed; one success closes it."""

    def __init__(self, opts: StoreOptions, location: str):
        self.backoff = Backoff(opts.backoff_initial_s, opts.backoff_max_s)
        self.location = location
        self.retry_at = 0.0
        self.down_since: float | None = None
        self.last_error = ""

    def check(self) -> None:
        if self.down_since is not None and time.monotonic() < self.retry_at:
            raise FeatureStoreUnavailable(f"feature store {self.location} unavailable "
                                          f"(retrying with back-off): {self.last_error}")

    def failure(self, exc: BaseException) -> FeatureStoreUnavailable:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.warning("feature store %s unavailable: %s", self.location, exc)
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.retry_at = now + self.backoff.next()
        return FeatureStoreUnavailable(f"feature store {self.location} unavailable: {self.last_error}")

    def success(self) -> None:
        if self.down_since is not None:
            log.warning("feature store %s is back", self.location)
            self.down_since = None
            self.backoff.reset()


def dedupe(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Unique keys and the inverse index (None when already unique): network stores fetch
    each key once per batch."""
    if len(keys) < 2:
        return keys, None
    uniq, inverse = np.unique(keys, return_inverse=True)
    if len(uniq) == len(keys):
        return keys, None
    return uniq, inverse


def network_keys(keys: Any) -> np.ndarray:
    """Lookup keys as numpy for the network stores: integers as int64, strings as objects."""
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        keys = keys.to_numpy(zero_copy_only=False)
    arr = np.asarray(keys).reshape(-1)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind in "US":
        return arr.astype(object)
    return arr


class NetworkStore(StoreBase):
    """The metadata path the network backends (Redis, PostgreSQL) share: the current version's
    metadata, read through the circuit breaker with retries.

    Subclasses set ``_breaker`` and ``_network_errors`` (the client exceptions that mean the
    store is unreachable) and implement ``_sync_version``; ``_drop_sync`` forgets a broken
    synchronous connection where the client does not reconnect by itself."""

    _breaker: CircuitBreaker
    _network_errors: Callable[[], tuple[type[BaseException], ...]]

    def _sync_version(self, force: bool) -> Any:
        raise NotImplementedError

    def _drop_sync(self) -> None:
        pass

    def _meta(self) -> Any:
        def read() -> Any:
            self._breaker.check()
            try:
                cur = self._sync_version(force=False)
            except self._network_errors() as exc:
                self._drop_sync()
                raise self._breaker.failure(exc) from exc
            self._breaker.success()
            return cur
        return retry_sync(read, self.options)

    @property
    def schema(self) -> pa.Schema:
        return self._meta().codec.schema

    @property
    def version(self) -> str:
        return str(self._meta().version)

    @property
    def key(self) -> str:
        return self._meta().key

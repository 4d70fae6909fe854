"""What every backend shares: the lookup entry points of the `FeatureStore` protocol on top of
one ``_fetch`` per backend, and the network stores' metadata path.

Stores fail fast: an unreachable store raises ``FeatureStoreUnavailable`` at once, saying why.
Whether to try again is the caller's decision (``connectors.retry.RetryPolicy``)."""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from connectors.feature_store.base import FeatureStoreUnavailable
from connectors.feature_store.lineage import tag_lineage
from connectors.feature_store.options import StoreOptions
from connectors.feature_store.rows import RowCodec

log = logging.getLogger("streamscore.feature_store")
Fetched = tuple[RowCodec, np.ndarray, np.ndarray, str]  # codec, records, found, lineage of the version read


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
    @staticmethod
    def _batch(fetched: Fetched) -> tuple[pa.RecordBatch, np.ndarray]:
        codec, records, found, lineage = fetched
        return tag_lineage(codec.to_batch(records, found), lineage), found

    @staticmethod
    def _matrix(fetched: Fetched) -> tuple[np.ndarray, np.ndarray]:
        codec, records, found, _ = fetched
        return codec.to_matrix(records, found), found

    def lookup(self, keys: np.ndarray | pa.Array) -> tuple[pa.RecordBatch, np.ndarray]:
        """Features of ``keys`` (row-aligned, duplicates allowed; rows of missing keys null) and
        the found mask. The batch's schema metadata names the version that answered
        (:func:`lineage_of`: ``name@version``), so an answer never mixes or misnames versions."""
        return self._batch(self._fetch(keys))

    async def lookup_async(self, keys: np.ndarray | pa.Array) -> tuple[pa.RecordBatch, np.ndarray]:
        """`lookup` for asyncio callers."""
        return self._batch(await self._fetch_async(keys))

    def lookup_numpy(self, keys: np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Features as an (n, features) matrix (all features must share one dtype): the fast
        path for models that take a float matrix. Rows of missing keys: NaN (floats) or 0."""
        return self._matrix(self._fetch(keys))

    async def lookup_numpy_async(self, keys: np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        return self._matrix(await self._fetch_async(keys))

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.options.name!r}>"


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
    metadata, failing fast with the reason when the store cannot be reached.

    Subclasses set ``_network_errors`` (the client exceptions that mean the store is
    unreachable) and ``_location``, and implement ``_sync_version``; ``_drop_sync`` forgets a
    broken synchronous connection where the client does not reconnect by itself."""

    _network_errors: Callable[[], tuple[type[BaseException], ...]]
    _location: str

    def _sync_version(self, force: bool) -> Any:
        raise NotImplementedError

    def _lineage(self, version: Any) -> str:
        """``name@version`` of a served version (what its answers carry)."""
        return f"{self.options.name}@{version.version}"

    def _drop_sync(self) -> None:
        pass

    def unavailable(self, exc: BaseException) -> FeatureStoreUnavailable:
        """The error a lookup raises for a client failure: where, and why."""
        log.debug("feature store %s unavailable: %s", self._location, exc)
        return FeatureStoreUnavailable(f"feature store {self._location} unavailable: {type(exc).__name__}: {exc}")

    def _meta(self) -> Any:
        try:
            return self._sync_version(force=False)
        except self._network_errors() as exc:
            self._drop_sync()
            raise self.unavailable(exc) from exc

    @property
    def schema(self) -> pa.Schema:
        return self._meta().codec.schema

    @property
    def version(self) -> str:
        return str(self._meta().version)

    @property
    def key(self) -> str:
        return self._meta().key

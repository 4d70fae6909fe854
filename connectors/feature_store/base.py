"""The one feature-store interface the enrichment operators use.

A feature store maps an entity key to a fixed row of features (an Arrow schema). Lookups are
batched: one call per micro-batch of events, never one per event.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa


class FeatureStoreError(Exception):
    """Base error of the feature store."""


class FeatureStoreUnavailable(FeatureStoreError):
    """The store cannot be reached (down, restarting, timed out). Events wait or dead-letter
    with reason ``feature_store_unavailable``; features are never silently dropped."""


@runtime_checkable
class FeatureStore(Protocol):
    schema: pa.Schema   # the feature columns (without the key)
    version: str        # the snapshot version currently served

    def lookup(self, keys: np.ndarray | pa.Array) -> tuple[pa.RecordBatch, np.ndarray]:
        """Features for a batch of keys: a RecordBatch row-aligned with ``keys`` (rows of
        missing keys are null) and a boolean ``found`` mask. Duplicate keys are allowed."""

    async def lookup_async(self, keys: np.ndarray | pa.Array) -> tuple[pa.RecordBatch, np.ndarray]:
        """The same, for asyncio callers (the async I/O operators)."""

    def close(self) -> None:
        """Release connections and shared-memory references."""

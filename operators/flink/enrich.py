"""Enrichment through PyFlink's async I/O operator: one batched feature lookup per micro-batch."""
from __future__ import annotations

from pyflink.common import Time, Types
from pyflink.datastream import AsyncDataStream, DataStream
from pyflink.datastream.functions import AsyncFunction, RuntimeContext

from connectors import dead_letter as dl
from connectors.feature_store import FeatureStoreUnavailable, open_store
from operators import steps
from operators.batch import MicroBatch
from operators.flink.metrics import metric_group


class EnrichFromFeatureStore(AsyncFunction):
    """Looks up every event's entity key in the feature store (one call per micro-batch) and
    appends the features; unknown entities and an unreachable store become dead letters."""

    def __init__(self, store_uri: str, key_field: str, timeout_ms: int) -> None:
        self.store_uri = store_uri
        self.key_field = key_field
        self.timeout_ms = timeout_ms

    def open(self, ctx: RuntimeContext) -> None:
        self._store = open_store(self.store_uri)
        metrics = metric_group(ctx)
        self._unknown = metrics.counter("unknown_entities")
        self._lookup_ms = metrics.distribution("feature_lookup_ms")

    async def async_invoke(self, batch: MicroBatch):
        if batch.events.num_rows == 0:
            return [batch]
        started = steps.now_ms()
        try:
            features, found = await self._store.lookup_async(steps.lookup_keys(batch, self.key_field))
        except FeatureStoreUnavailable as exc:
            return [steps.reject_all(batch, dl.FEATURE_STORE_UNAVAILABLE, str(exc)[:500])]
        self._lookup_ms.update(int(steps.now_ms() - started))
        enriched = steps.join_features(batch, features, self._store.dead_letter_mask(found))
        self._unknown.inc(batch.events.num_rows - enriched.events.num_rows)
        return [enriched]

    def timeout(self, batch: MicroBatch):
        return [steps.reject_all(batch, dl.FEATURE_STORE_UNAVAILABLE,
                                 f"feature lookup timed out after {self.timeout_ms} ms")]

    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()


def enrich(stream: DataStream, *, store_uri: str, key_field: str, timeout_ms: int, capacity: int) -> DataStream:
    """Apply the async enrichment; batches leave in the order they came (per-partition order of
    predictions follows the input)."""
    return (AsyncDataStream.ordered_wait(
        stream, EnrichFromFeatureStore(store_uri, key_field, timeout_ms), Time.milliseconds(timeout_ms),
        capacity, Types.PICKLED_BYTE_ARRAY())
        .name("enrich:feature-store").uid("enrich-feature-store"))

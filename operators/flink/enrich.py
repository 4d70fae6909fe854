"""Enrichment through PyFlink's async I/O operator: one batched feature lookup per micro-batch."""
from __future__ import annotations

import asyncio

from pyflink.common import Time, Types
from pyflink.datastream import AsyncDataStream, DataStream
from pyflink.datastream.async_retry_strategies import FixedDelayRetryStrategy
from pyflink.datastream.functions import AsyncFunction, RuntimeContext

from connectors import dead_letter as dl
from connectors.feature_store import FeatureStoreUnavailable, open_store
from operators import steps
from operators.batch import MicroBatch
from operators.flink.metrics import metric_group


class EnrichFromFeatureStore(AsyncFunction):
    """Looks up every event's entity key in the feature store (one call per micro-batch) and
    appends the features; unknown entities become dead letters.

    An attempt that times out or finds the store unavailable yields the batch with every event
    dead-lettered (``feature_store_unavailable``); the operator's retry strategy
    (:func:`lookup_failed`) tries again after a back-off, and only the last attempt's result is
    emitted. So a slow or restarting store delays events, and dead-letters them only once the
    retries are used up: it never drops them."""

    def __init__(self, store_uri: str, key_field: str, timeout_ms: int) -> None:
        self.store_uri = store_uri
        self.key_field = key_field
        self.timeout_ms = timeout_ms

    def open(self, ctx: RuntimeContext) -> None:
        self._store = open_store(self.store_uri)
        metrics = metric_group(ctx)
        self._unknown = metrics.counter("unknown_entities")
        self._failed_attempts = metrics.counter("feature_lookup_failed_attempts")
        self._lookup_ms = metrics.distribution("feature_lookup_ms")

    async def async_invoke(self, batch: MicroBatch):
        if batch.events.num_rows == 0:
            return [batch]
        started = steps.now_ms()
        try:
            features, found = await asyncio.wait_for(
                self._store.lookup_async(steps.lookup_keys(batch, self.key_field)), self.timeout_ms / 1000)
        except (FeatureStoreUnavailable, asyncio.TimeoutError) as exc:
            self._failed_attempts.inc()
            detail = str(exc) or f"feature lookup took longer than {self.timeout_ms} ms"
            return [steps.reject_all(batch, dl.FEATURE_STORE_UNAVAILABLE, detail[:500])]
        self._lookup_ms.update(int(steps.now_ms() - started))
        enriched = steps.join_features(batch, features, self._store.dead_letter_mask(found))
        self._unknown.inc(batch.events.num_rows - enriched.events.num_rows)
        return [enriched]

    def timeout(self, batch: MicroBatch):
        return [steps.reject_all(batch, dl.FEATURE_STORE_UNAVAILABLE,
                                 "feature lookup retries did not finish within the operator's timeout")]

    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()


def lookup_failed(result: list[MicroBatch]) -> bool:
    """Retry predicate: the attempt dead-lettered its events because the store was unavailable."""
    return any(b.events.num_rows == 0 and b.dead_letters and
               b.dead_letters[-1].reason == dl.FEATURE_STORE_UNAVAILABLE for b in result)


def enrich(stream: DataStream, *, store_uri: str, key_field: str, timeout_ms: int, retries: int,
           retry_backoff_ms: int, capacity: int) -> DataStream:
    """Apply the async enrichment; batches leave in the order they came (per-partition order of
    predictions follows the input). ``timeout_ms`` bounds one attempt; ``retries`` more attempts
    follow a failed one, ``retry_backoff_ms`` apart."""
    total_ms = (retries + 1) * timeout_ms + retries * retry_backoff_ms + 1000
    function = EnrichFromFeatureStore(store_uri, key_field, timeout_ms)
    if retries:
        strategy = FixedDelayRetryStrategy(retries, retry_backoff_ms, lookup_failed, None)
        enriched = AsyncDataStream.ordered_wait_with_retry(
            stream, function, Time.milliseconds(total_ms), strategy, capacity, Types.PICKLED_BYTE_ARRAY())
    else:
        enriched = AsyncDataStream.ordered_wait(
            stream, function, Time.milliseconds(total_ms), capacity, Types.PICKLED_BYTE_ARRAY())
    return enriched.name("enrich").uid("enrich-feature-store")

"""Enrichment through PyFlink's async I/O operator: one batched feature lookup per micro-batch."""
from __future__ import annotations

from pyflink.common import Time, Types
from pyflink.datastream import AsyncDataStream, DataStream
from pyflink.datastream.functions import AsyncFunction, RuntimeContext

from connectors import dead_letter as dl
from connectors.feature_store import FeatureStoreUnavailable, open_store
from connectors.retry import RetryPolicy
from operators import steps
from operators.batch import MicroBatch
from operators.flink.metrics import metric_group


class EnrichFromFeatureStore(AsyncFunction):
    """Looks up every event's entity key in the feature store (one call per micro-batch) and
    appends the features; unknown entities are handled by the pipeline's ``missing`` policy.

    An attempt that times out or finds the store unavailable is tried again under the job's
    ``retry`` policy (``connectors.retry``, the same policy the Beam job uses); once the
    attempts are used up, the batch's events are dead-lettered ``feature_store_unavailable``.
    So a slow or restarting store delays events, and dead-letters them only then: it never
    drops them."""

    def __init__(self, store_uri: str, key_field: str, retry: RetryPolicy,
                 missing: steps.MissingEntityPolicy = steps.MissingEntityPolicy()) -> None:
        self.store_uri = store_uri
        self.key_field = key_field
        self.retry = retry
        self.missing = missing

    def open(self, ctx: RuntimeContext) -> None:
        self._store = open_store(self.store_uri)
        metrics = metric_group(ctx)
        self._unknown = metrics.counter("unknown_entities")
        self._failed_attempts = metrics.counter("feature_lookup_failed_attempts")
        self._lookup_ms = metrics.distribution("feature_lookup_ms")

    async def async_invoke(self, batch: MicroBatch):
        if batch.events.num_rows == 0:
            return [batch]
        keys = steps.lookup_keys(batch, self.key_field)
        started = steps.now_ms()
        try:
            features, found = await self.retry.call_async(
                lambda: self._store.lookup_async(keys), retry_on=(FeatureStoreUnavailable,),
                on_failure=lambda _: self._failed_attempts.inc())
        except (FeatureStoreUnavailable, TimeoutError) as exc:
            return [steps.reject_all(batch, dl.Reason.FEATURE_STORE_UNAVAILABLE, str(exc)[:500])]
        self._lookup_ms.update(int(steps.now_ms() - started))
        self._unknown.inc(int((~found).sum()))
        return [steps.join_features(batch, features, found, self.missing)]

    def timeout(self, batch: MicroBatch):
        return [steps.reject_all(batch, dl.Reason.FEATURE_STORE_UNAVAILABLE,
                                 "feature lookup retries did not finish within the retry policy's budget")]

    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()


def enrich(stream: DataStream, *, store_uri: str, key_field: str, retry: RetryPolicy, capacity: int,
           missing: steps.MissingEntityPolicy = steps.MissingEntityPolicy()) -> DataStream:
    """Apply the async enrichment; batches leave in the order they came (per-partition order of
    predictions follows the input). The operator's timeout is the retry policy's budget."""
    function = EnrichFromFeatureStore(store_uri, key_field, retry, missing)
    enriched = AsyncDataStream.ordered_wait(stream, function, Time.milliseconds(int(retry.budget_s() * 1000)),
                                            capacity, Types.PICKLED_BYTE_ARRAY())
    return enriched.name("enrich").uid("enrich-feature-store")

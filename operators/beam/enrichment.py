"""Beam enrichment over the streamscore feature stores (any ``open_store`` URI), one class per
element kind:

* rows (``beam.Row`` / NamedTuple with the key field): :class:`FeatureStoreEnrichmentHandler`
  for stock ``apache_beam.transforms.enrichment.Enrichment``. The response is a ``beam.Row`` of
  the features plus ``unknown_entity`` (True when the store does not know the entity and the
  pipeline's policy dead-letters such events; ``StreamscoreModelHandler`` then answers
  ``Rejected(unknown_entity)``), joined by Enrichment's default ``cross_join``.
* micro-batches (the streamscore pipeline): :class:`EnrichMicroBatches`, stock
  ``RequestResponseIO`` (Enrichment's own engine: batching, timeout, metrics) with
  :class:`MicroBatchLookup` as its caller, which answers with the enriched micro-batch itself
  (``operators.steps.join_features``, exactly as the Flink job): no join function, no dict.

Both look up one Beam batch of requests in one store call under the job's one retry policy
(``connectors.retry``); Beam's own repeater is off. A store still unavailable after it: rows
raise (Beam retries the bundle); micro-batches dead-letter their events ``feature_store_unavailable``.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Iterable, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

with warnings.catch_warnings():   # google-auth/api-core (imported by Beam's requestresponse) nag at import
    warnings.simplefilter("ignore", FutureWarning)
    from apache_beam.io.requestresponse import (Caller, NoOpsRepeater, RequestResponseIO,
                                                UserCodeExecutionException)
    from apache_beam.transforms.enrichment import EnrichmentSourceHandler

from connectors import dead_letter as dl
from connectors.feature_store import FeatureStoreUnavailable, open_store
from connectors.retry import RetryPolicy
from operators import steps
from operators.batch import MicroBatch
from operators.beam.common import METRICS_NAMESPACE

log = logging.getLogger(__name__)
UNKNOWN_ENTITY_FIELD = "unknown_entity"
NO_REPEATS = NoOpsRepeater()    # retries are the retry policy's, not Beam's repeater's


class _StoreLookup:
    """What both element kinds share: the store (opened on the worker) and one lookup under the
    retry policy."""

    def __init__(self, store_uri: str, key_field: str, retry: RetryPolicy, missing: steps.MissingEntityPolicy,
                 min_batch_size: int, max_batch_size: int, store_options: dict[str, Any]) -> None:
        self.store_uri = store_uri
        self.key_field = key_field
        self.retry = retry
        self.missing = missing
        self.store_options = store_options
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size,
                          "element_size_fn": self.request_size}
        self._store = None

    def request_size(self, request: Any) -> int:
        return 1

    def __enter__(self):
        # a synchronous attempt is bounded by the store's own operation timeout
        self._store = open_store(self.store_uri, **{"timeout_s": self.retry.attempt_timeout_s, **self.store_options})
        return self

    def __exit__(self, *exc):
        if self._store is not None:
            self._store.close()
            self._store = None

    def lookup(self, keys: np.ndarray) -> tuple[pa.RecordBatch, np.ndarray]:
        """One store call, tried again under the retry policy while the store is unavailable."""
        def failed(exc: BaseException) -> None:
            log.warning("feature lookup failed: %s", exc)
        return self.retry.call(lambda: self._store.lookup(keys), retry_on=(FeatureStoreUnavailable,),
                               on_failure=failed)

    def batch_elements_kwargs(self):
        return self._batching

    def __str__(self) -> str:   # RequestResponseIO's metrics namespace
        return f"{METRICS_NAMESPACE}.Enrichment"


class FeatureStoreEnrichmentHandler(_StoreLookup, EnrichmentSourceHandler):
    """Rows: looks up each row's ``key_field`` in the feature store at ``store_uri`` (one store
    call per Beam batch) for stock ``Enrichment``.

    RequestResponseIO calls the handler on a thread of its own, where Beam metrics are not
    recorded: RequestResponseIO's own counters (namespace ``streamscore.Enrichment``: requests =
    store lookups, failures, ...) count what happens."""

    def __init__(self, store_uri: str, key_field: str, *, retry: RetryPolicy = RetryPolicy(),
                 missing: steps.MissingEntityPolicy = steps.MissingEntityPolicy(),
                 min_batch_size: int = 1, max_batch_size: int = 4000, **store_options: Any) -> None:
        """``retry``: when to try an unavailable store again; ``missing``: what an unknown entity
        becomes (default: rejected ``unknown_entity``); ``max_batch_size`` counts rows;
        ``store_options`` go to ``open_store``."""
        super().__init__(store_uri, key_field, retry, missing, min_batch_size, max_batch_size, store_options)

    def __call__(self, request, *args, **kwargs):
        requests = request if isinstance(request, list) else [request]   # Beam batches, or not
        pairs = self._enrich(requests)
        return pairs if isinstance(request, list) else pairs[0]

    def _enrich(self, rows: Sequence[Any]) -> list[tuple[Any, beam.Row]]:
        keys = np.asarray([getattr(row, self.key_field) for row in rows])
        try:
            features, found = self.lookup(keys)
        except FeatureStoreUnavailable as exc:
            raise UserCodeExecutionException(f"feature store unavailable: {exc}") from exc
        features = self.missing.fill(features, found)
        unknown = self.missing.dead_letters(found).tolist()
        return [(row, beam.Row(**values, **{UNKNOWN_ENTITY_FIELD: gone}))
                for row, values, gone in zip(rows, features.to_pylist(), unknown)]

    def get_cache_key(self, request: Any) -> str:
        return f"{self.key_field}: {getattr(request, self.key_field)}"


class EnrichedBatch(NamedTuple):
    """A micro-batch after its lookup, with what the lookup found out (counted as metrics on
    the pipeline's thread: Beam drops metrics updated on RequestResponseIO's caller thread)."""

    batch: MicroBatch
    unknown: int          # events of entities the store does not know
    unavailable: bool     # the store did not answer: every event dead-lettered


class MicroBatchLookup(_StoreLookup, Caller):
    """Micro-batches: one store call for all micro-batches of a Beam batch; answers with each
    enriched micro-batch (``steps.join_features``)."""

    def request_size(self, batch: MicroBatch) -> int:
        return batch.events.num_rows

    def __call__(self, batches: list[MicroBatch], *args, **kwargs) -> list[EnrichedBatch]:
        keys = [steps.lookup_keys(b, self.key_field) for b in batches]
        sizes = [len(k) for k in keys]
        if not sum(sizes):
            return [EnrichedBatch(b, 0, False) for b in batches]
        try:
            features, found = self.lookup(np.concatenate(keys))
        except FeatureStoreUnavailable as exc:
            detail = str(exc)[:500] or "feature store unavailable"
            return [EnrichedBatch(steps.reject_all(b, dl.Reason.FEATURE_STORE_UNAVAILABLE, detail), 0, bool(n))
                    for b, n in zip(batches, sizes)]
        out, start = [], 0
        for batch, n in zip(batches, sizes):
            hit = found[start:start + n]
            out.append(EnrichedBatch(steps.join_features(batch, features.slice(start, n), hit, self.missing),
                                     int(n - hit.sum()), False))
            start += n
        return out


class _CountEnrichment(beam.DoFn):
    def setup(self) -> None:
        self._unknown = Metrics.counter(METRICS_NAMESPACE, "unknown_entities")
        self._unavailable = Metrics.counter(METRICS_NAMESPACE, "feature_store_unavailable")

    def process(self, item: EnrichedBatch) -> Iterable[MicroBatch]:
        self._unknown.inc(item.unknown)
        if item.unavailable:
            self._unavailable.inc(item.batch.num_records)
        yield item.batch


class EnrichMicroBatches(beam.PTransform):
    """MicroBatch → the same micro-batch with its features appended (unknown entities and an
    unavailable store handled as in the Flink job), through stock ``RequestResponseIO``."""

    def __init__(self, store_uri: str, key_field: str, *, retry: RetryPolicy = RetryPolicy(),
                 missing: steps.MissingEntityPolicy = steps.MissingEntityPolicy(),
                 min_batch_size: int = 1, max_batch_size: int = 4000, **store_options: Any) -> None:
        super().__init__()
        self.lookup = MicroBatchLookup(store_uri, key_field, retry, missing, min_batch_size, max_batch_size,
                                       store_options)

    def expand(self, batches):
        return (batches
                | "Lookup" >> RequestResponseIO(self.lookup, timeout=self.lookup.retry.budget_s(), repeater=NO_REPEATS)
                | "Count" >> beam.ParDo(_CountEnrichment()))

"""A Beam ``EnrichmentSourceHandler`` over the streamscore feature stores (Plasma, arrow-shm,
Redis, PostgreSQL: any ``open_store`` URI), for stock ``apache_beam.transforms.enrichment.Enrichment``.

Requests are batched (``batch_elements_kwargs``): one store lookup serves every request of a
Beam batch. A request is either

* a row (``beam.Row`` / NamedTuple with the key field): the response is a ``beam.Row`` of the
  features, joined by Enrichment's default ``cross_join``. An entity the store does not know
  gets null features (the model's schema validation then refuses the row). An unavailable store
  raises (Beam retries the bundle).
* a micro-batch wrapped in :class:`BatchRequest` (the streamscore pipeline): the response is a
  :class:`FeatureRows`, joined by :func:`join_micro_batch` with ``operators.steps`` exactly as
  the Flink job does: unknown entities become dead letters ``unknown_entity``, and a store still
  unavailable after the retries dead-letters the batch's events ``feature_store_unavailable``.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

with warnings.catch_warnings():   # google-auth/api-core (imported by Beam's requestresponse) nag at import
    warnings.simplefilter("ignore", FutureWarning)
    from apache_beam.io.requestresponse import DEFAULT_TIMEOUT_SECS, UserCodeExecutionException  # noqa: F401
    from apache_beam.transforms.enrichment import Enrichment, EnrichmentSourceHandler  # noqa: F401

from connectors import dead_letter as dl
from connectors.feature_store import FeatureStoreUnavailable, open_store
from connectors.retry import RetryPolicy
from operators import steps
from operators.batch import MicroBatch
from operators.beam.common import METRICS_NAMESPACE, as_dict

log = logging.getLogger(__name__)


class BatchRequest(NamedTuple):
    """An Enrichment request for a whole micro-batch (Enrichment joins ``_asdict()`` views)."""

    batch: MicroBatch


class FeatureRows(NamedTuple):
    """The response to a BatchRequest: features row-aligned with the batch's events, the found
    mask and the pipeline's policy for unknown entities, or why the store could not answer."""

    features: pa.RecordBatch | None
    found: np.ndarray | None
    missing: steps.MissingEntityPolicy | None = None
    unavailable: str | None = None


def request_rows(request: Any) -> int:
    """How many keys a request looks up (BatchElements' ``element_size_fn``)."""
    return request.batch.events.num_rows if isinstance(request, BatchRequest) else 1


def join_micro_batch(request: dict, response: dict) -> MicroBatch:
    """Enrichment ``join_fn`` for BatchRequests: the micro-batch with its features appended."""
    batch, features = request["batch"], FeatureRows(**response)
    if features.unavailable is not None:
        Metrics.counter(METRICS_NAMESPACE, "feature_store_unavailable").inc(batch.events.num_rows)
        return steps.reject_all(batch, dl.Reason.FEATURE_STORE_UNAVAILABLE, features.unavailable)
    if features.features is None:
        return batch
    Metrics.counter(METRICS_NAMESPACE, "unknown_entities").inc(int((~features.found).sum()))
    return steps.join_features(batch, features.features, features.found, features.missing)


class FeatureStoreEnrichmentHandler(EnrichmentSourceHandler):
    """Looks up the ``key_field`` of each request in the feature store at ``store_uri``.

    RequestResponseIO calls the handler on a thread of its own, where Beam metrics are not
    recorded: RequestResponseIO's own counters (namespace ``streamscore.Enrichment``: requests =
    store lookups, failures, ...) and :func:`join_micro_batch`'s count what happens."""

    def __init__(self, store_uri: str, key_field: str, *, retry: RetryPolicy = RetryPolicy(),
                 missing: steps.MissingEntityPolicy = steps.MissingEntityPolicy(),
                 min_batch_size: int = 1, max_batch_size: int = 4000, **store_options: Any) -> None:
        """``retry``: when to try an unavailable store again (the job's one policy); ``missing``:
        what happens to unknown entities; ``max_batch_size`` counts keys; ``store_options`` go
        to ``open_store``."""
        self.store_uri = store_uri
        self.key_field = key_field
        self.retry = retry
        self.missing = missing
        self.store_options = store_options
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size,
                          "element_size_fn": request_rows}
        self._store = None

    def __enter__(self):
        # a synchronous attempt is bounded by the store's own operation timeout
        self._store = open_store(self.store_uri, **{"timeout_s": self.retry.attempt_timeout_s, **self.store_options})
        return self

    def __exit__(self, *exc):
        if self._store is not None:
            self._store.close()
            self._store = None

    def __call__(self, request, *args, **kwargs):
        requests = request if isinstance(request, list) else [request]
        pairs = self._lookup(requests)
        return pairs if isinstance(request, list) else pairs[0]

    def _keys(self, request: Any) -> np.ndarray:
        if isinstance(request, BatchRequest):
            return steps.lookup_keys(request.batch, self.key_field)
        return np.asarray([as_dict(request)[self.key_field]])

    def _lookup(self, requests: Sequence[Any]) -> list[tuple[Any, Any]]:
        keys = [self._keys(r) for r in requests]
        sizes = [len(k) for k in keys]
        features, found, unavailable = None, None, None
        if sum(sizes):
            try:
                features, found = self._fetch(np.concatenate(keys))
            except FeatureStoreUnavailable as exc:
                if not all(isinstance(r, BatchRequest) for r in requests):
                    raise UserCodeExecutionException(f"feature store unavailable: {exc}") from exc
                unavailable = str(exc)[:500] or "feature store unavailable"
        pairs, start, row_features = [], 0, None
        for request, n in zip(requests, sizes):
            part = slice(start, start + n)
            start += n
            if unavailable is not None or n == 0:
                pairs.append((request, FeatureRows(None, None, None, unavailable)))
                continue
            rows, hit = features.slice(part.start, n), found[part]
            if isinstance(request, BatchRequest):
                pairs.append((request, FeatureRows(rows, hit, self.missing)))
            else:
                row_features = row_features or features.to_pylist()
                pairs.append((request, beam.Row(**row_features[part.start])))
        return pairs

    def _fetch(self, keys: np.ndarray) -> tuple[pa.RecordBatch, np.ndarray]:
        """One lookup under the retry policy (the same one the Flink job applies)."""
        def failed(exc: BaseException) -> None:
            log.warning("feature lookup failed: %s", exc)
        return self.retry.call(lambda: self._store.lookup(keys), retry_on=(FeatureStoreUnavailable,),
                               on_failure=failed)

    def get_cache_key(self, request: Any) -> str:
        if isinstance(request, BatchRequest):
            raise TypeError("micro-batch requests are not cacheable; use Enrichment without a cache")
        return f"{self.key_field}: {as_dict(request)[self.key_field]}"

    def batch_elements_kwargs(self):
        return self._batching

    def __str__(self) -> str:   # RequestResponseIO's metrics namespace
        return f"{METRICS_NAMESPACE}.Enrichment"

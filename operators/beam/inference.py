"""Beam ``ModelHandler``s for every model format of ``model_formats`` (PMML, ONNX, skops), for
stock ``apache_beam.ml.inference.RunInference``, one class per element kind:

* :class:`StreamscoreModelHandler` — rows (``beam.Row``, NamedTuple or dict, e.g. after
  ``Enrichment``). RunInference batches them (``batch_elements_kwargs``); the whole batch is
  validated against the model's own input schema and scored in one call. Inference: a dict of
  the model's outputs (``score``, ``label``, ``probability_<class>``), or :class:`Rejected`
  (reason ``unknown_entity`` or ``model_input_rejected``, and the detail) for a row that cannot
  be scored; :class:`SplitRejected` routes those to their own output.
* :class:`MicroBatchModelHandler` — micro-batches (the streamscore pipeline): each is scored by
  ``operators.steps`` exactly as the Flink job does. Inference: a ``ScoredBatch``.
* :class:`ExperimentModelHandler` — micro-batches scored by the champion and, beside it, its
  shadows and canary (``operators.experiments.ExperimentScorer``, the Flink job's scorer).
* :class:`RouteModelHandler` — micro-batches whose events each go to their route's model(s)
  (``operators.experiments.RouteScorer``, the Flink job's router).

A runtime failure raises out of ``run_inference``, so ``RunInference(...).with_exception_handling()``
routes the failed batch to its dead-letter output (:func:`failed_batch_dead_letters` turns
micro-batches into streamscore dead letters, reason ``scoring_error``). ``PredictionResult.model_id``
is ``name:version`` of the model that scored the example, so a model swap through RunInference's
side input (``model_metadata_pcoll`` / ``watch_model_pattern``) shows in every result. A model id
may carry the registered name and version (``path#name=fraud&version=3``, what the registry's
``champion_model_id`` / ``champion_schedule`` give): predictions then name those.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from connectors import dead_letter as dl
from connectors.events import EventSchema
from model_formats import Model, load_model
from operators import steps
from operators.batch import MicroBatch
from operators.beam.common import METRICS_NAMESPACE, as_dict
from operators.beam.enrichment import UNKNOWN_ENTITY_FIELD


def split_model_id(model_id: str) -> tuple[str, dict[str, str]]:
    """``path#name=<n>&version=<v>`` (a registry model id, ``registry.follow.model_id``) → the
    path and the name/version to load it under; a plain path → itself and {}."""
    path, sep, fragment = str(model_id).partition("#")
    if not sep:
        return path, {}
    from urllib.parse import parse_qsl

    identity = {k: v for k, v in parse_qsl(fragment) if k in ("name", "version")}
    return path, identity


class Rejected(NamedTuple):
    """The inference of a row that cannot be scored (row examples only)."""

    reason: dl.Reason       # unknown_entity or model_input_rejected
    detail: str             # the validator's reason (e.g. ``missing:f0``)


class _Handler(ModelHandler):
    """What both element kinds share: loading, model updates, batching, metrics."""

    def __init__(self, model_path: str, *, intra_op_threads: int = 1, min_batch_size: int = 1,
                 max_batch_size: int = 4000, max_batch_duration_secs: float | None = None,
                 **load_options: Any) -> None:
        """``max_batch_size`` counts rows (a micro-batch weighs its number of events);
        ``load_options`` go to ``load_model``."""
        super().__init__()
        self._model_path = str(model_path)
        self._intra_op_threads = intra_op_threads
        self._load_options = load_options
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size,
                          "element_size_fn": self.example_rows}
        if max_batch_duration_secs is not None:
            self._batching["max_batch_duration_secs"] = max_batch_duration_secs

    @staticmethod
    def example_rows(example: Any) -> int:
        return 1

    @property
    def model_path(self) -> str:
        return self._model_path

    def load_model(self) -> Model:
        path, identity = split_model_id(self._model_path)
        return load_model(path, intra_op_num_threads=self._intra_op_threads, **{**self._load_options, **identity})

    def update_model_path(self, model_path: str | None = None) -> None:
        """Side-input model update: the next ``load_model`` reads ``model_path`` (empty: keep)."""
        if model_path:
            self._model_path = model_path

    def _count(self, rejected: int, scored: int) -> None:
        namespace = self.get_metrics_namespace()
        Metrics.counter(namespace, "model_input_rejected").inc(rejected)
        Metrics.counter(namespace, "rows_scored").inc(scored)

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}.RunInference"

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._model_path!r})"


class StreamscoreModelHandler(_Handler):
    """Rows: loads any ``model_formats`` model (the file extension picks the runtime) and scores
    a Beam batch of rows with one validation and one model call."""

    def run_inference(self, batch: Sequence[Any], model: Model,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        model_id = f"{model.name}:{model.version}"
        return [PredictionResult(row, inference, model_id) for row, inference in zip(batch, self._score(batch, model))]

    def _score(self, rows: Sequence[Any], model: Model) -> list[Any]:
        dicts = [as_dict(row) for row in rows]
        inferences: list[Any] = [None] * len(rows)
        scorable = []
        for i, d in enumerate(dicts):
            if d.get(UNKNOWN_ENTITY_FIELD):
                inferences[i] = Rejected(dl.Reason.UNKNOWN_ENTITY, steps.UNKNOWN_ENTITY_DETAIL)
            else:
                scorable.append(i)
        present = {name for i in scorable for name in dicts[i]}
        columns = {name: np.asarray([dicts[i].get(name) for i in scorable]) for name in model.schema.input_names
                   if name in present}
        checked = model.validate(columns) if scorable else None
        outputs = model.predict(checked.valid).to_pylist() if checked is not None and len(checked.valid_index) else []
        if checked is not None:
            for i, out in zip(checked.valid_index, outputs):
                inferences[scorable[int(i)]] = out
            for i, reason in zip(checked.rejected_index, checked.reasons):
                inferences[scorable[int(i)]] = Rejected(dl.Reason.MODEL_INPUT_REJECTED, reason)
        self._count(0 if checked is None else len(checked.rejected_index), len(outputs))
        return inferences

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        """8 bytes a value (Beam's default pickles the batch)."""
        return sum(8 * len(as_dict(row)) for row in batch)


class SplitRejected(beam.DoFn):
    """RunInference results of rows → the scored ones (main output) and, on the output tagged
    ``rejected``, those whose inference is :class:`Rejected`:
    ``results | beam.ParDo(SplitRejected()).with_outputs("rejected", main="scored")``."""

    def process(self, result: PredictionResult):
        if isinstance(result.inference, Rejected):
            yield beam.pvalue.TaggedOutput("rejected", result)
        else:
            yield result


class MicroBatchModelHandler(_Handler):
    """Micro-batches: validates each against the model's schema and scores the valid rows
    (``steps.score_batch_or_raise``): rows the schema refuses become ``model_input_rejected``."""

    def __init__(self, model_path: str, *, schema: EventSchema | None = None, **options: Any) -> None:
        """``schema``: the event schema (ids, keys, timestamps of the prediction records)."""
        super().__init__(model_path, **options)
        self._schema = schema or EventSchema()

    @staticmethod
    def example_rows(example: MicroBatch) -> int:
        return example.events.num_rows

    def run_inference(self, batch: Sequence[MicroBatch], model: Model,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        model_id = f"{model.name}:{model.version}"
        return [PredictionResult(b, self._score(b, model), model_id) for b in batch]

    def _score(self, batch: MicroBatch, model: Model) -> steps.ScoredBatch:
        scored = steps.score_batch_or_raise(batch, model, self._schema)
        self._count(scored.rejected, scored.predictions.num_rows)
        return scored

    def get_num_bytes(self, batch: Sequence[MicroBatch]) -> int:
        """Arrow bytes of the micro-batches."""
        return sum(b.events.nbytes for b in batch)


def failed_batch_dead_letters(failure: tuple[Sequence[MicroBatch], Any]) -> list[MicroBatch]:
    """RunInference's dead-letter output ``(batch, exception info)`` of micro-batches → the
    micro-batches with every event dead-lettered (``scoring_error``), keeping their earlier dead
    letters; counted as ``scoring_errors`` like the Flink scorer does."""
    batch, error = failure
    detail = _error_text(error)
    Metrics.counter(f"{METRICS_NAMESPACE}.RunInference", "scoring_errors").inc(sum(b.events.num_rows for b in batch))
    return [steps.reject_all(b, dl.Reason.SCORING_ERROR, detail) for b in batch]


def _error_text(error: Any) -> str:
    """``with_exception_handling`` hands over (type, repr, traceback) or the exception."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"[:500]
    if isinstance(error, tuple) and len(error) >= 2:
        return str(error[1])[:500]
    return str(error)[:500]


class ExperimentModelHandler(MicroBatchModelHandler):
    """Micro-batches scored by the champion and its challengers (a ``ChallengerPlan``: shadows and
    a canary) with ``operators.experiments.ExperimentScorer``, the scorer the Flink job runs:
    the served result (canary's entities by the canary, the rest by the champion, the champion as
    the canary's fallback), shadow predictions on ``experiment.shadow_predictions``, and either
    closed processing-time comparison windows (``experiment.comparisons``) or, with
    ``emit_pairs``, each batch's aligned predictions (``experiment.pairs``) for the pipeline to
    window in event time.

    Why one RunInference with this handler rather than a RunInference branch per model, the usual
    Beam shape for several models: the canary's served output needs the champion's and the
    canary's results of the same events together (which entity is served by whom, and the
    champion's predictions when the canary raises), and every comparison needs both models' rows
    of the same events. Branches would have to be joined again per micro-batch by a GroupByKey,
    which on an unbounded read needs a trigger and holds the served output back until every
    branch has answered (on the DirectRunner such a join holds an unbounded read's output back
    entirely), and a slow shadow would then delay the served predictions: what the shadow budget
    exists to prevent. One scorer for both engines also means one definition of skipping, backoff,
    fallback and the comparison. Challengers are loaded when the model is (RunInference loads up
    front), so no batch skips a shadow that is still loading."""

    def __init__(self, model_path: str, *, challengers: Any, schema: EventSchema | None = None,
                 shadow_budget_ms: float | None = 200.0, comparison_window_ms: int = 10_000,
                 emit_pairs: bool = False, load_timeout_s: float = 300.0, **options: Any) -> None:
        """``challengers``: a ``model_formats.reloading.ChallengerPlan``. ``shadow_budget_ms``
        None: every batch waits for its shadows (bounded runs: every shadow prediction wanted)."""
        super().__init__(model_path, schema=schema, **options)
        self._challengers = challengers
        self._shadow_budget_ms = shadow_budget_ms
        self._window_ms = comparison_window_ms
        self._emit_pairs = emit_pairs
        self._load_timeout_s = load_timeout_s

    def load_model(self) -> "ExperimentModel":
        from operators.experiments import ExperimentScorer

        champion = super().load_model()
        scorer = ExperimentScorer(self._schema, shadow_budget_ms=self._shadow_budget_ms, window_ms=self._window_ms,
                                  emit_pairs=self._emit_pairs, intra_op_num_threads=self._intra_op_threads,
                                  **self._load_options)
        scorer.set_plan(self._challengers)
        scorer.wait_loaded(self._load_timeout_s)
        return ExperimentModel(champion, scorer)

    def run_inference(self, batch: Sequence[MicroBatch], model: "ExperimentModel",
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        model_id = f"{model.name}:{model.version}"
        results = []
        for b in batch:
            scored = model.score(b)
            self._count(scored.rejected, scored.predictions.num_rows)
            results.append(PredictionResult(b, scored, model_id))
        return results


EXPERIMENT_COUNTERS = ("shadow_skipped", "shadow_batches", "canary_served", "canary_fallbacks")


class ExperimentModel:
    """The champion and its ``ExperimentScorer`` as RunInference's one model (RunInference may
    share a model among threads: one batch is scored at a time)."""

    def __init__(self, champion: Model, scorer: Any) -> None:
        import threading

        self.champion = champion
        self.scorer = scorer
        self.name, self.version = champion.name, champion.version
        self._lock = threading.Lock()
        self._counted = dict.fromkeys(EXPERIMENT_COUNTERS, 0)

    def score(self, batch: MicroBatch) -> steps.ScoredBatch:
        with self._lock:
            scored = self.scorer.score(batch, self.champion)
            x = self.scorer
            now = dict(zip(EXPERIMENT_COUNTERS, (x.shadow_skipped, x.shadow_batches, x.canary_events,
                                                 x.canary_fallbacks)))
            for name, value in now.items():
                if value != self._counted[name]:
                    Metrics.counter(METRICS_NAMESPACE, name).inc(value - self._counted[name])
            self._counted = now
        return scored


class RouteModelHandler(MicroBatchModelHandler):
    """Micro-batches whose events each go to the first route they match
    (``operators.experiments.RouteScorer``, the Flink job's router): the route's model(s) score
    them, events no route matches become dead letters ``no_route``; predictions in the input's
    order, each naming its route's model. Every routed model is loaded once, when RunInference
    loads its model. Metrics ``route_<name>_events`` and ``no_route`` (events)."""

    def __init__(self, routes: Any, *, schema: EventSchema | None = None, **options: Any) -> None:
        """``routes``: a ``jobs.config.RoutePlan`` (its ``scorer`` loads the models)."""
        super().__init__("routes", schema=schema, **options)
        self._routes = routes

    def load_model(self) -> "RoutedModel":
        return RoutedModel(self._routes.scorer(self._schema, intra_op_num_threads=self._intra_op_threads,
                                               **self._load_options))

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            raise ValueError("routes load their models once; a model update cannot say which route it is for")

    def run_inference(self, batch: Sequence[MicroBatch], model: "RoutedModel",
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        results = []
        for b in batch:
            scored = model.score(b)
            self._count(scored.rejected, scored.predictions.num_rows)
            results.append(PredictionResult(b, scored, "routes"))
        return results


class RoutedModel:
    """A ``RouteScorer`` as RunInference's one model (one batch at a time), counting its routes."""

    def __init__(self, router: Any) -> None:
        import threading

        self.router = router
        self._lock = threading.Lock()
        self._counted = dict(router.route_events)
        self._no_route = 0

    def score(self, batch: MicroBatch) -> steps.ScoredBatch:
        with self._lock:
            scored = self.router.score(batch)
            for name, count in self.router.route_events.items():
                if count != self._counted[name]:
                    Metrics.counter(METRICS_NAMESPACE, f"route_{name}_events").inc(count - self._counted[name])
                    self._counted[name] = count
            if self.router.no_route != self._no_route:
                Metrics.counter(METRICS_NAMESPACE, "no_route").inc(self.router.no_route - self._no_route)
                self._no_route = self.router.no_route
        return scored

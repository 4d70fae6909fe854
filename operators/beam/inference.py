"""A Beam ``ModelHandler`` for every model format of ``model_formats`` (PMML, ONNX, skops), for
stock ``apache_beam.ml.inference.RunInference``.

Examples may be either

* rows: ``dict``, ``beam.Row`` or NamedTuple (what a Beam user has, e.g. after ``Enrichment``).
  RunInference batches them (``batch_elements_kwargs``); the whole batch is validated against
  the model's own input schema and scored in one call. Inference: a dict of the model's outputs
  (``score``, ``label``, ``probability_<class>``), or :class:`Rejected` with the validator's
  reason for a row the model cannot take.
* micro-batches (:class:`operators.batch.MicroBatch`, the streamscore pipeline): each is scored
  by ``operators.steps`` exactly as the Flink job does. Inference: a ``ScoredBatch`` (prediction
  records + dead letters, rows the schema refuses as ``model_input_rejected``).

A runtime failure raises out of ``run_inference``, so ``RunInference(...).with_exception_handling()``
routes the failed batch to its dead-letter output (:func:`failed_batch_dead_letters` turns it
into streamscore dead letters, reason ``scoring_error``). ``PredictionResult.model_id`` is
``name:version`` of the model that scored the example, so a model swap through RunInference's
side input (``model_metadata_pcoll`` / ``watch_model_pattern``) shows in every result.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from connectors import dead_letter as dl
from connectors.events import EventSchema
from model_formats import Model, load_model
from operators import steps
from operators.batch import MicroBatch
from operators.beam.common import METRICS_NAMESPACE, as_dict

Example = MicroBatch | Mapping[str, Any] | Any   # Any: beam.Row / NamedTuple


class Rejected(NamedTuple):
    """The inference of a row the model's input schema refuses (row examples only)."""

    reason: str


def example_rows(example: Example) -> int:
    """How many rows an example holds (BatchElements' ``element_size_fn``)."""
    return example.events.num_rows if isinstance(example, MicroBatch) else 1


class StreamscoreModelHandler(ModelHandler[Example, PredictionResult, Model]):
    """Loads any ``model_formats`` model (the file extension picks the runtime) and scores
    batches of rows or micro-batches with it."""

    def __init__(self, model_path: str, *, schema: EventSchema | None = None, intra_op_threads: int = 1,
                 min_batch_size: int = 1, max_batch_size: int = 4000,
                 max_batch_duration_secs: float | None = None, **load_options: Any) -> None:
        """``schema``: the event schema (micro-batch examples); ``max_batch_size`` counts rows
        (a micro-batch weighs its number of events); ``load_options`` go to ``load_model``."""
        super().__init__()
        self._model_path = str(model_path)
        self._schema = schema or EventSchema()
        self._intra_op_threads = intra_op_threads
        self._load_options = load_options
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size,
                          "element_size_fn": example_rows}
        if max_batch_duration_secs is not None:
            self._batching["max_batch_duration_secs"] = max_batch_duration_secs

    @property
    def model_path(self) -> str:
        return self._model_path

    def load_model(self) -> Model:
        return load_model(self._model_path, intra_op_num_threads=self._intra_op_threads, **self._load_options)

    def update_model_path(self, model_path: str | None = None) -> None:
        """Side-input model update: the next ``load_model`` reads ``model_path`` (empty: keep)."""
        if model_path:
            self._model_path = model_path

    def run_inference(self, batch: Sequence[Example], model: Model,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        model_id = f"{model.name}:{model.version}"
        rows = [e for e in batch if not isinstance(e, MicroBatch)]
        row_inferences = iter(self._score_rows(rows, model) if rows else ())
        return [PredictionResult(e, self._score_batch(e, model) if isinstance(e, MicroBatch) else next(row_inferences),
                                 model_id) for e in batch]

    def _score_batch(self, batch: MicroBatch, model: Model) -> steps.ScoredBatch:
        scored = steps.score_batch_or_raise(batch, model, self._schema)
        self._count(scored.rejected, scored.predictions.num_rows)
        return scored

    def _count(self, rejected: int, scored: int) -> None:
        namespace = self.get_metrics_namespace()
        Metrics.counter(namespace, "model_input_rejected").inc(rejected)
        Metrics.counter(namespace, "rows_scored").inc(scored)

    def _score_rows(self, rows: Sequence[Any], model: Model) -> list[Any]:
        """One validation and one model call for all row examples of the batch."""
        dicts = [as_dict(r) for r in rows]
        present = {name for d in dicts for name in d}
        columns = {name: np.asarray([d.get(name) for d in dicts]) for name in model.schema.input_names
                   if name in present}
        checked = model.validate(columns)
        outputs = model.predict(checked.valid).to_pylist() if len(checked.valid_index) else []
        inferences: list[Any] = [None] * len(rows)
        for i, out in zip(checked.valid_index, outputs):
            inferences[int(i)] = out
        for i, reason in zip(checked.rejected_index, checked.reasons):
            inferences[int(i)] = Rejected(reason)
        self._count(len(checked.rejected_index), len(outputs))
        return inferences

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        """Arrow bytes of micro-batches, 8 bytes a value of rows (Beam's default pickles the batch)."""
        return sum(e.events.nbytes if isinstance(e, MicroBatch) else 8 * len(as_dict(e)) for e in batch)

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}.RunInference"

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def __repr__(self) -> str:
        return f"StreamscoreModelHandler({self._model_path!r})"


def failed_batch_dead_letters(failure: tuple[Sequence[Example], Any]) -> list[MicroBatch]:
    """RunInference's dead-letter output ``(batch, exception info)`` → the micro-batches of that
    batch with every event dead-lettered (``scoring_error``), keeping their earlier dead letters.
    Row examples are left to the caller (there is no Kafka record behind them)."""
    batch, error = failure
    detail = _error_text(error)
    failed = [steps.reject_all(e, dl.Reason.SCORING_ERROR, detail) for e in batch if isinstance(e, MicroBatch)]
    Metrics.counter(f"{METRICS_NAMESPACE}.RunInference", "scoring_errors").inc(
        sum(e.events.num_rows for e in batch if isinstance(e, MicroBatch)))
    return failed


def _error_text(error: Any) -> str:
    """``with_exception_handling`` hands over (type, repr, traceback) or the exception."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"[:500]
    if isinstance(error, tuple) and len(error) >= 2:
        return str(error[1])[:500]
    return str(error)[:500]

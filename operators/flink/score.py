"""Scoring operator: one model call per micro-batch."""
from __future__ import annotations

from typing import Any

from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.datastream.functions import MapFunction, RuntimeContext

from connectors.events import EventSchema
from model_formats.reloading import ReloadingModel
from operators import steps
from operators.batch import MicroBatch
from operators.flink.metrics import metric_group


class ScoreMicroBatch(MapFunction):
    """Validates each micro-batch against the model's schema and scores the valid rows. A new
    model version from the model's source (a replaced file, or a registry promotion) takes over
    between micro-batches once it loads and checks (see ``model_formats.reloading``).

    ``model``: the model file's path, or a picklable spec whose ``open()`` gives a
    ``ModelSource`` in the worker (``registry.follow.FollowSpec``)."""

    def __init__(self, model: str | Any, schema: EventSchema, intra_op_threads: int = 1,
                 reload_interval_s: float = 5.0, load_options: dict | None = None) -> None:
        self.model_path = model
        self.load_options = dict(load_options or {})
        self.schema = schema
        self.intra_op_threads = intra_op_threads
        self.reload_interval_s = reload_interval_s

    def open(self, ctx: RuntimeContext) -> None:
        source = self.model_path if isinstance(self.model_path, str) else self.model_path.open()
        self._model = ReloadingModel(source, self.reload_interval_s,
                                     intra_op_num_threads=self.intra_op_threads, **self.load_options)
        metrics = metric_group(ctx)
        self._score_ms = metrics.distribution("scoring_ms")
        self._rejected = metrics.counter("model_input_rejected")
        self._failed = metrics.counter("scoring_errors")
        self._reloads = metrics.counter("model_reloads")
        self._refused = metrics.counter("model_reloads_refused")
        self._seen = (0, 0)

    def map(self, batch: MicroBatch) -> steps.ScoredBatch:
        started = steps.now_ms()
        model = self._model.current()
        if (self._model.reloads, self._model.failures) != self._seen:
            self._reloads.inc(self._model.reloads - self._seen[0])
            self._refused.inc(self._model.failures - self._seen[1])
            self._seen = (self._model.reloads, self._model.failures)
        scored = steps.score_batch(batch, model, self.schema)
        self._score_ms.update(int(steps.now_ms() - started))
        self._rejected.inc(scored.rejected)    # rows refused by the schema, not failed batches
        self._failed.inc(scored.failed)
        return scored

    def close(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()


def score_micro_batches(stream: DataStream, *, model: str | Any, schema: EventSchema, intra_op_threads: int,
                        reload_interval_s: float = 5.0, load_options: dict | None = None) -> DataStream:
    """Score every micro-batch (``model``: a file path or a model source spec, see ScoreMicroBatch)."""
    return (stream.map(ScoreMicroBatch(model, schema, intra_op_threads, reload_interval_s, load_options),
                       Types.PICKLED_BYTE_ARRAY())
            .name("score").uid("score-model"))

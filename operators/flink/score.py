"""Scoring operator: one model call per micro-batch."""
from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.datastream.functions import MapFunction, RuntimeContext

from connectors.events import EventSchema
from model_formats import load_model
from operators import steps
from operators.batch import MicroBatch
from operators.flink.metrics import metric_group


class ScoreMicroBatch(MapFunction):
    """Validates each micro-batch against the model's schema and scores the valid rows."""

    def __init__(self, model_path: str, schema: EventSchema, intra_op_threads: int = 1) -> None:
        self.model_path = model_path
        self.schema = schema
        self.intra_op_threads = intra_op_threads

    def open(self, ctx: RuntimeContext) -> None:
        self._model = load_model(self.model_path, intra_op_num_threads=self.intra_op_threads)
        metrics = metric_group(ctx)
        self._score_ms = metrics.distribution("scoring_ms")
        self._rejected = metrics.counter("model_input_rejected")

    def map(self, batch: MicroBatch) -> steps.ScoredBatch:
        started = steps.now_ms()
        before = len(batch.dead_letters)
        scored = steps.score(batch, self._model, self.schema)
        self._score_ms.update(int(steps.now_ms() - started))
        self._rejected.inc(len(scored.dead_letters) - before)
        return scored

    def close(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()


def score(stream: DataStream, *, model_path: str, schema: EventSchema, intra_op_threads: int) -> DataStream:
    return (stream.map(ScoreMicroBatch(model_path, schema, intra_op_threads), Types.PICKLED_BYTE_ARRAY())
            .name("score:model").uid("score-model"))

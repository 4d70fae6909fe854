"""The scoring pipeline's steps on micro-batches, independent of any engine.

Flink operators, Beam transforms and the plain-loop benchmark all call these, so the three do
exactly the same work.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors import dead_letter as dl
from connectors.events import OFFSET_COLUMN, EventSchema, JsonEventDecoder
from connectors.kafka.partition_reader import RecordChunk
from connectors.serialization import record_batch_to_json
from model_formats.base import LABEL, SCORE, Model
from operators.batch import MicroBatch, now_ms

PREDICTION_FIELDS = ("prediction_id", "event_id", "entity_id", "score", "label", "model",
                     "model_version", "event_ts", "scored_ts")


def decode(decoder: JsonEventDecoder, chunk: RecordChunk) -> MicroBatch:
    """Raw Kafka records → a micro-batch of valid events + dead letters for the rest."""
    decoded = decoder.decode(chunk.values, chunk.offsets)
    letters = [dl.DeadLetter(chunk.values[i], reason, detail, chunk.topic, chunk.partition, chunk.offsets[i])
               for i, reason, detail in decoded.rejected]
    return MicroBatch(chunk.topic, chunk.partition, decoded.events, letters)


def lookup_keys(batch: MicroBatch, key_field: str) -> np.ndarray:
    """The entity keys of the batch's events, as the feature store takes them."""
    return batch.events.column(key_field).to_numpy(zero_copy_only=False)


def join_features(batch: MicroBatch, features: pa.RecordBatch, unknown: np.ndarray) -> MicroBatch:
    """Append the looked-up feature columns; events marked ``unknown`` (entity not in the store,
    under the store's dead-letter policy) become dead letters with reason ``unknown_entity``."""
    events = batch.events
    for name, column in zip(features.schema.names, features.columns):
        if name in events.schema.names:
            raise ValueError(f"feature {name!r} clashes with an event field of the same name")
        events = _append_column(events, name, column)
    return batch.with_events(events).split_off(np.asarray(unknown, dtype=bool), dl.UNKNOWN_ENTITY,
                                               "entity not found in the feature store")


def _append_column(batch: pa.RecordBatch, name: str, column: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(list(batch.columns) + [column], names=batch.schema.names + [name])


def reject_all(batch: MicroBatch, reason: str, detail: str) -> MicroBatch:
    """Every event of the batch becomes a dead letter (e.g. the feature store timed out)."""
    return batch.split_off(np.ones(batch.events.num_rows, dtype=bool), reason, detail)


@dataclass
class ScoredBatch:
    predictions: pa.RecordBatch     # PREDICTION_FIELDS
    dead_letters: list[dl.DeadLetter]
    source: MicroBatch


def score(batch: MicroBatch, model: Model, schema: EventSchema) -> ScoredBatch:
    """Validate against the model's input schema and score the valid rows in one call; rows the
    model refuses become dead letters with the validator's reason as detail. A runtime failure
    on the batch dead-letters the batch (reason ``scoring_error``) instead of failing the job
    over and over on the same poison input."""
    try:
        return score_strict(batch, model, schema)
    except Exception as exc:  # noqa: BLE001 - any model/runtime failure is the batch's fate, not the job's
        failed = reject_all(batch, dl.SCORING_ERROR, f"{type(exc).__name__}: {exc}"[:500])
        return ScoredBatch(_prediction_rows(failed, model, schema, None), failed.dead_letters, failed)


def score_strict(batch: MicroBatch, model: Model, schema: EventSchema) -> ScoredBatch:
    """`score` without the safety net: a runtime failure raises (for engines that route failed
    batches themselves, e.g. Beam's ``RunInference.with_exception_handling``)."""
    result = model.validate(batch.events)
    if len(result.rejected_index):
        reject = np.zeros(batch.events.num_rows, dtype=bool)
        reject[result.rejected_index] = True
        batch = batch.split_off(reject, dl.MODEL_INPUT_REJECTED, list(result.reasons))
    n = batch.events.num_rows
    outputs = model.predict(result.valid) if n else None
    return ScoredBatch(_prediction_rows(batch, model, schema, outputs), batch.dead_letters, batch)


def _prediction_rows(batch: MicroBatch, model: Model, schema: EventSchema,
                     outputs: pa.RecordBatch | None) -> pa.RecordBatch:
    events = batch.events
    n = events.num_rows
    if outputs is None:
        return pa.RecordBatch.from_arrays([pa.array([], pa.null())] * len(PREDICTION_FIELDS),
                                          names=list(PREDICTION_FIELDS))
    if outputs.num_rows != n:
        raise RuntimeError(f"model {model.name} returned {outputs.num_rows} rows for {n} inputs")
    prefix = f"{batch.topic}/{batch.partition}/"
    ids = pc.binary_join_element_wise(prefix, pc.cast(events.column(OFFSET_COLUMN), pa.string()), "")
    arrays = [
        ids,
        events.column(schema.id_field),
        events.column(schema.key_field),
        pc.cast(outputs.column(SCORE), pa.float64()),
        outputs.column(LABEL),
        pa.array([model.name] * n, pa.string()),
        pa.array([model.version] * n, pa.string()),
        events.column(schema.timestamp_field),
        pa.array(np.full(n, int(now_ms()), dtype=np.int64)),
    ]
    return pa.RecordBatch.from_arrays(arrays, names=list(PREDICTION_FIELDS))


def prediction_records(scored: ScoredBatch) -> tuple[list[bytes], list[bytes] | None]:
    """Kafka record values (JSON) and keys (the entity id) of the batch's predictions."""
    values = record_batch_to_json(scored.predictions)
    if not values:
        return values, None
    return values, [str(k).encode() for k in scored.predictions.column("entity_id").to_pylist()]

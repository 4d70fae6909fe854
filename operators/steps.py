"""The scoring pipeline's steps on micro-batches, independent of any engine.

Flink operators, Beam transforms and the plain-loop benchmark all call these, so the three do
exactly the same work.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors import dead_letter as dl
from connectors.events import OFFSET_COLUMN, EventSchema, JsonEventDecoder
from connectors.feature_store.lineage import lineage_of
from connectors.kafka.partition_reader import RecordChunk
from connectors.serialization import column_values, record_batch_to_json
from model_formats.base import LABEL, SCORE, Model
from operators.batch import MicroBatch, now_ms

# Lineage on every prediction: the model and version that scored it, the feature snapshot
# (``name@version``) that enriched the event, and the model's role.
PREDICTION_FIELDS = ("prediction_id", "event_id", "entity_id", "score", "label", "model",
                     "model_version", "features", "role", "event_ts", "scored_ts")


def decode(decoder: JsonEventDecoder, chunk: RecordChunk) -> MicroBatch:
    """Raw Kafka records → a micro-batch of valid events + dead letters for the rest."""
    decoded = decoder.decode(chunk.values, chunk.offsets)
    letters = [dl.DeadLetter(chunk.values[i], reason, detail, chunk.topic, chunk.partition, chunk.offsets[i])
               for i, reason, detail in decoded.rejected]
    return MicroBatch(chunk.topic, chunk.partition, decoded.events, letters)


def lookup_keys(batch: MicroBatch, key_field: str) -> np.ndarray:
    """The entity keys of the batch's events, as the feature store takes them."""
    return batch.events.column(key_field).to_numpy(zero_copy_only=False)


UNKNOWN_ENTITY_DETAIL = "entity not found in the feature store"


class OnMissingEntity(str, enum.Enum):
    """What the pipeline does with an event whose entity the feature store does not know."""
    DEAD_LETTER = "dead_letter"   # the event becomes a dead letter ``unknown_entity``
    SCORE = "score"               # the event goes on with null features (or ``defaults``): the
                                  # model's schema then decides (``model_input_rejected`` if it
                                  # cannot take nulls)


@dataclass(frozen=True)
class MissingEntityPolicy:
    """The pipeline's setting for unknown entities (``features.on_missing``/``features.defaults``
    in the job config), applied by :func:`join_features` the same way on every engine."""
    on_missing: OnMissingEntity = OnMissingEntity.DEAD_LETTER
    defaults: Mapping[str, float] = field(default_factory=dict)   # SCORE: these features' values

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_missing", OnMissingEntity(self.on_missing))
        if self.defaults and self.on_missing is not OnMissingEntity.SCORE:
            raise ValueError("feature defaults apply only with on_missing: score")

    def dead_letters(self, found: np.ndarray) -> np.ndarray:
        """Which events become dead letters ``unknown_entity``."""
        if self.on_missing is OnMissingEntity.SCORE:
            return np.zeros(len(found), dtype=bool)
        return ~np.asarray(found, dtype=bool)

    def fill(self, features: pa.RecordBatch, found: np.ndarray) -> pa.RecordBatch:
        """``features`` with the defaults in the rows of unknown entities."""
        return _fill_defaults(features, np.asarray(found, dtype=bool), self.defaults) if self.defaults else features


def join_features(batch: MicroBatch, features: pa.RecordBatch, found: np.ndarray,
                  policy: MissingEntityPolicy = MissingEntityPolicy()) -> MicroBatch:
    """Append the looked-up feature columns (row-aligned with the events; ``found``: the store
    knew the entity). Events of unknown entities become dead letters ``unknown_entity``, or go on
    with null features or the policy's defaults. The batch keeps the answer's lineage (the
    snapshot's ``name@version``, see ``connectors.feature_store.lineage``)."""
    lineage = lineage_of(features)
    features = policy.fill(features, found)
    events = batch.events
    clashes = set(features.schema.names) & set(events.schema.names)
    if clashes:
        raise ValueError(f"feature {sorted(clashes)[0]!r} clashes with an event field of the same name")
    events = pa.RecordBatch.from_arrays(list(events.columns) + list(features.columns),
                                        names=events.schema.names + features.schema.names)
    return batch.with_events(events, lineage).split_off(policy.dead_letters(found), dl.Reason.UNKNOWN_ENTITY,
                                               UNKNOWN_ENTITY_DETAIL)


def _fill_defaults(features: pa.RecordBatch, found: np.ndarray, defaults: Mapping[str, float]) -> pa.RecordBatch:
    unknown = sorted(set(defaults) - set(features.schema.names))
    if unknown:
        raise ValueError(f"defaults for features the store does not have: {unknown}")
    if found.all():
        return features
    missing = pa.array(~found)
    columns = [pc.if_else(missing, pa.scalar(defaults[name], column.type), column) if name in defaults else column
               for name, column in zip(features.schema.names, features.columns)]
    return pa.RecordBatch.from_arrays(columns, names=features.schema.names)


def reject_all(batch: MicroBatch, reason: dl.Reason, detail: str) -> MicroBatch:
    """Every event of the batch becomes a dead letter (e.g. the feature store timed out)."""
    return batch.split_off(np.ones(batch.events.num_rows, dtype=bool), reason, detail)


SHADOW, CANARY = "shadow", "canary"
CHAMPION = "champion"   # the role of the served model (a registry deployment's champion): its results
                        # are the job's output; other roles (shadow, canary, challenger) add to it


@dataclass
class ScoredBatch:
    """One model's results for one micro-batch, tagged with the model and its role."""
    predictions: pa.RecordBatch     # PREDICTION_FIELDS
    dead_letters: list[dl.DeadLetter]
    batch: MicroBatch               # the micro-batch whose valid events were scored
    rejected: int = 0               # rows this step dead-lettered ``model_input_rejected``
    failed: int = 0                 # rows this step dead-lettered ``scoring_error``
    model: str = ""                 # name, version and role of the model that scored it
    model_version: str = ""
    role: str = CHAMPION
    experiment: "ExperimentOutput | None" = None    # shadows and comparisons of the batch, if any


@dataclass(frozen=True)
class ModelSlot:
    """A model a job scores with, and its role (e.g. ``champion``, ``challenger``, ``shadow``).

    The champion's results are the job's predictions and dead letters, exactly those of a
    one-model job (``prediction_id`` = the input's ``topic/partition/offset``). Every other
    model's predictions have ``prediction_id`` = ``topic/partition/offset/<model name>@<version>``:
    unique per (input record, model version: a registry deployment's shadows share the champion's
    name), deterministic across replays. Every prediction names its role."""
    model: Model
    role: str = CHAMPION


def score_with_models(batch: MicroBatch, slots: Sequence[ModelSlot], schema: EventSchema) -> list[ScoredBatch]:
    """Score one micro-batch with several models (the first slot champion, name@version unique):
    one :class:`ScoredBatch` per model, each validated and scored on its own."""
    names = [f"{slot.model.name}@{slot.model.version}" for slot in slots]
    if len(set(names)) != len(names):
        raise ValueError(f"the models of a job need distinct names or versions (prediction ids use them): {names}")
    if not slots or slots[0].role != CHAMPION or any(slot.role == CHAMPION for slot in slots[1:]):
        raise ValueError(f"the first model, and only it, has the role {CHAMPION!r}: {[s.role for s in slots]}")
    return [score_batch(batch, slot.model, schema, role=slot.role) for slot in slots]


def score_batch(batch: MicroBatch, model: Model, schema: EventSchema, role: str = CHAMPION,
                served: bool | None = None) -> ScoredBatch:
    """Validate against the model's input schema and score the valid rows in one call; rows the
    model refuses become dead letters with the validator's reason as detail. A runtime failure
    on the batch dead-letters the batch (reason ``scoring_error``) instead of failing the job
    over and over on the same poison input. ``served``: its predictions are the job's output, with
    the input's coordinates as ``prediction_id`` (default: the champion's are)."""
    try:
        return score_batch_or_raise(batch, model, schema, role, served)
    except Exception as exc:  # noqa: BLE001 - any model/runtime failure is the batch's fate, not the job's
        failed = reject_all(batch, dl.Reason.SCORING_ERROR, f"{type(exc).__name__}: {exc}"[:500])
        return ScoredBatch(_prediction_rows(failed, model, schema, None, role, served), failed.dead_letters, failed,
                           failed=batch.events.num_rows, model=model.name, model_version=model.version, role=role)


def score_batch_or_raise(batch: MicroBatch, model: Model, schema: EventSchema, role: str = CHAMPION,
                         served: bool | None = None) -> ScoredBatch:
    """`score_batch` without the safety net: a runtime failure raises (for engines that route failed
    batches themselves, e.g. Beam's ``RunInference.with_exception_handling``)."""
    result = model.validate(batch.events)
    if len(result.rejected_index):
        reject = np.zeros(batch.events.num_rows, dtype=bool)
        reject[result.rejected_index] = True
        batch = batch.split_off(reject, dl.Reason.MODEL_INPUT_REJECTED, list(result.reasons))
    n = batch.events.num_rows
    outputs = model.predict(result.valid) if n else None
    return ScoredBatch(_prediction_rows(batch, model, schema, outputs, role, served), batch.dead_letters, batch,
                       rejected=len(result.rejected_index), model=model.name, model_version=model.version,
                       role=role)


def _prediction_rows(batch: MicroBatch, model: Model, schema: EventSchema,
                     outputs: pa.RecordBatch | None, role: str = CHAMPION,
                     served: bool | None = None) -> pa.RecordBatch:
    events = batch.events
    n = events.num_rows
    names = list(PREDICTION_FIELDS)
    if outputs is None:
        return pa.RecordBatch.from_arrays([pa.array([], pa.null())] * len(names), names=names)
    if outputs.num_rows != n:
        raise RuntimeError(f"model {model.name} returned {outputs.num_rows} rows for {n} inputs")
    prefix = f"{batch.topic}/{batch.partition}/"
    suffix = "" if (role == CHAMPION if served is None else served) else f"/{model.name}@{model.version}"
    ids = pc.binary_join_element_wise(prefix, pc.cast(events.column(OFFSET_COLUMN), pa.string()), suffix, "")
    arrays = [
        ids,
        events.column(schema.id_field),
        events.column(schema.key_field),
        pc.cast(outputs.column(SCORE), pa.float64()),
        outputs.column(LABEL),
        pa.array([model.name] * n, pa.string()),
        pa.array([model.version] * n, pa.string()),
        pa.array([batch.features] * n, pa.string()),
        pa.array([role] * n, pa.string()),
        events.column(schema.timestamp_field),
        pa.array(np.full(n, int(now_ms()), dtype=np.int64)),
    ]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def prediction_records(scored: ScoredBatch) -> tuple[list[bytes], list[bytes] | None]:
    """Kafka record values (JSON) and keys (the entity id) of the batch's predictions."""
    values = record_batch_to_json(scored.predictions)
    if not values:
        return values, None
    return values, [str(k).encode() for k in column_values(scored.predictions.column("entity_id"))]


# -- live experiments: a canary serving a share of the entities, shadows scored beside -----------

@dataclass
class ExperimentOutput:
    """What a micro-batch's challengers produced besides the served output: shadow predictions
    (for the shadow topic, never the main output) and the comparison windows that closed."""
    shadow_predictions: list[pa.RecordBatch] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    pairs: list = field(default_factory=list)       # experiments.ComparisonPair, when the engine windows them

    def shadow_records(self) -> tuple[list[bytes], list[bytes]]:
        """Kafka record values (JSON) and keys (entity id) of the shadow predictions."""
        values: list[bytes] = []
        keys: list[bytes] = []
        for rows in self.shadow_predictions:
            values += record_batch_to_json(rows)
            keys += [str(k).encode() for k in column_values(rows.column("entity_id"))]
        return values, keys

    def shadow_rows(self) -> tuple[pa.RecordBatch | None, np.ndarray]:
        """Every shadow's predictions as one batch (rows tagged with ``role`` and ``model_version``)
        and each row's input offset: what the file sink writes to its ``shadow/`` dataset (None:
        no shadow scored the batch)."""
        full = [rows for rows in self.shadow_predictions if rows.num_rows]
        if not full:
            return None, np.empty(0, dtype=np.int64)
        rows = concat_predictions(full)
        return rows, prediction_offsets(rows)

    def comparison_records(self) -> tuple[list[bytes], list[bytes]]:
        """Kafka record values (JSON) and keys (``champion|challenger``) of the closed windows."""
        import json

        return ([json.dumps(_finite(c), allow_nan=False, default=_json_default).encode() for c in self.comparisons],
                [f"{c['champion']}|{c['challenger']}".encode() for c in self.comparisons])


def experiment_records(scored: ScoredBatch, shadow_topic: str | None,
                       comparison_topic: str | None) -> list[tuple[str, list[bytes], list[bytes]]]:
    """The batch's shadow predictions and closed comparison windows as (topic, values, keys)."""
    x = scored.experiment
    if x is None:
        return []
    out = []
    if x.shadow_predictions and shadow_topic:
        out.append((shadow_topic, *x.shadow_records()))
    if x.comparisons and comparison_topic:
        out.append((comparison_topic, *x.comparison_records()))
    return out


def _finite(value):
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def split_for_canary(batch: MicroBatch, served_by_canary: np.ndarray) -> tuple[MicroBatch, MicroBatch]:
    """The batch's events the champion serves (with the batch's dead letters) and those the canary
    serves (``served_by_canary``: a mask over the events, see ``experiments.canary_mask``)."""
    mask = pa.array(np.asarray(served_by_canary, dtype=bool))
    champion = batch.with_events(batch.events.filter(pc.invert(mask)))
    canary = MicroBatch(batch.topic, batch.partition, batch.events.filter(mask), [], batch.polled_at_ms,
                        batch.features)
    return champion, canary


def merge_served(batch: MicroBatch, parts: Sequence[ScoredBatch]) -> ScoredBatch:
    """One served result of the batch from the champion's and the canary's parts: predictions,
    dead letters and the scored events (row-aligned with the predictions) of each, in turn."""
    predictions = concat_predictions([p.predictions for p in parts])
    events = [p.batch.events for p in parts if p.batch.events.num_rows]
    scored_events = pa.Table.from_batches(events).combine_chunks().to_batches()[0] if events \
        else batch.events.slice(0, 0)
    head = parts[0]
    return ScoredBatch(predictions, [d for p in parts for d in p.dead_letters], batch.with_events(scored_events),
                       rejected=sum(p.rejected for p in parts), failed=sum(p.failed for p in parts),
                       model=head.model, model_version=head.model_version, role=head.role)


def merge_in_input_order(batch: MicroBatch, parts: Sequence[ScoredBatch]) -> ScoredBatch:
    """One served result of ``batch`` from parts that each scored some of its events (e.g. one per
    route): predictions and their scored events in the order the events have in ``batch``; the
    batch's own dead letters, then the parts'."""
    letters = list(batch.dead_letters) + [d for p in parts for d in p.dead_letters]
    full = [p for p in parts if p.predictions.num_rows]
    if not full:
        names = list(PREDICTION_FIELDS)
        empty = pa.RecordBatch.from_arrays([pa.array([], pa.null())] * len(names), names=names)
        head = parts[0] if parts else None
        return ScoredBatch(empty, letters, MicroBatch(batch.topic, batch.partition, batch.events.slice(0, 0), letters,
                                                      batch.polled_at_ms, batch.features),
                           rejected=sum(p.rejected for p in parts), failed=sum(p.failed for p in parts),
                           model=head.model if head else "", model_version=head.model_version if head else "")
    predictions = concat_predictions([p.predictions for p in full])
    events = pa.Table.from_batches([p.batch.events for p in full]).combine_chunks().to_batches()[0]
    position = {int(o): i for i, o in enumerate(batch.events.column(OFFSET_COLUMN).to_pylist())}
    order = pa.array(np.argsort([position[int(o)] for o in events.column(OFFSET_COLUMN).to_pylist()], kind="stable"))
    head = full[0]
    return ScoredBatch(predictions.take(order), letters,
                       MicroBatch(batch.topic, batch.partition, events.take(order), letters, batch.polled_at_ms,
                                  batch.features),
                       rejected=sum(p.rejected for p in parts), failed=sum(p.failed for p in parts),
                       model=head.model, model_version=head.model_version, role=head.role)


def prediction_offsets(rows: pa.RecordBatch) -> np.ndarray:
    """The input offset of each prediction, read from its ``prediction_id``
    (``topic/partition/offset``, a challenger's with ``/<model>@<version>`` after it; Kafka topic
    names have no ``/``)."""
    ids = rows.column("prediction_id").to_pylist()
    return np.fromiter((int(i.split("/", 3)[2]) for i in ids), dtype=np.int64, count=len(ids))


def concat_predictions(parts: Sequence[pa.RecordBatch]) -> pa.RecordBatch:
    """Prediction rows of several models as one batch (empty parts left out; a part whose types
    differ, e.g. integer labels beside text ones, is cast to the first part's, else to text)."""
    full = [p for p in parts if p.num_rows]
    if not full:
        return parts[0]
    if len(full) == 1:
        return full[0]
    schema = full[0].schema
    same = []
    for part in full:
        if not part.schema.equals(schema):
            try:
                part = part.cast(schema) if hasattr(part, "cast") else pa.Table.from_batches([part]).cast(schema) \
                    .combine_chunks().to_batches()[0]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return concat_predictions([_label_as_text(p) for p in full])
        same.append(part)
    return pa.Table.from_batches(same).combine_chunks().to_batches()[0]


def _label_as_text(rows: pa.RecordBatch) -> pa.RecordBatch:
    i = rows.schema.get_field_index(LABEL)
    return rows.set_column(i, LABEL, pc.cast(rows.column(i), pa.string())) if hasattr(rows, "set_column") else \
        pa.RecordBatch.from_arrays([pc.cast(c, pa.string()) if n == LABEL else c
                                    for n, c in zip(rows.schema.names, rows.columns)], names=rows.schema.names)

"""Decoding Kafka record values into Arrow micro-batches of events, with dead letters.

JSON is decoded with a vectorised fast path (one ``pyarrow.json`` call per micro-batch). Any
anomaly in the batch sends the whole batch through the strict per-record path, which is the one
authority on what is valid and why not, so a record's dead-letter reason never depends on which
other records shared its batch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pa_json

from connectors import dead_letter as dl

OFFSET_COLUMN = "_offset"   # source offset of the event
RAW_COLUMN = "_raw"         # the original record bytes (for dead letters after decoding)

_ARROW_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


@dataclass(frozen=True)
class EventSchema:
    """The fields an input event must carry (name → "string" | "int" | "float" | "bool")."""

    fields: dict[str, str] = field(default_factory=lambda: {
        "id": "string", "entity_id": "int", "amount": "float", "ts": "int"})
    id_field: str = "id"
    key_field: str = "entity_id"
    timestamp_field: str = "ts"   # event creation time, epoch milliseconds

    def __post_init__(self) -> None:
        unknown = {t for t in self.fields.values() if t not in _ARROW_TYPES}
        if unknown:
            raise ValueError(f"unsupported event field types {sorted(unknown)}; use {sorted(_ARROW_TYPES)}")
        for name in (self.id_field, self.key_field, self.timestamp_field):
            if name not in self.fields:
                raise ValueError(f"event schema lacks the field {name!r}")

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(n, _ARROW_TYPES[t]) for n, t in self.fields.items()])

    @property
    def decoded_schema(self) -> pa.Schema:
        """The schema of a decoded micro-batch: the event fields, OFFSET_COLUMN, RAW_COLUMN."""
        return (self.arrow_schema.append(pa.field(OFFSET_COLUMN, pa.int64()))
                .append(pa.field(RAW_COLUMN, pa.binary())))


@dataclass
class DecodedBatch:
    events: pa.RecordBatch        # valid events + OFFSET_COLUMN + RAW_COLUMN, in offset order
    rejected: list[tuple[int, dl.Reason, str]]  # (position in input, reason, detail)


def _loads(value: bytes):
    """orjson, falling back to the standard parser for what orjson refuses but is readable
    (integers beyond 64 bits, NaN, 1e999) so those get the precise reason ``invalid_value``."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            return json.loads(value)
        except RecursionError:     # nesting deeper than the interpreter's stack: not an event
            raise ValueError("JSON nested too deeply") from None


def _check_value(kind: str, value) -> tuple[dl.Reason, str] | None:
    """(reason, detail) when ``value`` is not a valid ``kind``, or None when it is."""
    wrong = dl.Reason.WRONG_TYPE
    if kind == "string":
        if not isinstance(value, str):
            return wrong, f"expected string, got {type(value).__name__}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:   # a lone surrogate escape (\ud800): no valid Unicode string
            return dl.Reason.INVALID_VALUE, "string holds a lone surrogate escape, out of Unicode's range"
        return None
    if kind == "bool":
        return None if isinstance(value, bool) else (wrong, f"expected bool, got {type(value).__name__}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return wrong, f"expected {kind}, got {type(value).__name__}"
    if kind == "int":
        if isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
            return dl.Reason.INVALID_VALUE, "integer out of int64 range"   # orjson reads big integers as floats
        if not isinstance(value, int):
            return wrong, f"expected int, got {type(value).__name__}"
        if not -(2**63) <= value < 2**63:
            return dl.Reason.INVALID_VALUE, "integer out of int64 range"
    return None


class JsonEventDecoder:
    """Turns a list of JSON record values into one Arrow RecordBatch plus rejections."""

    def __init__(self, schema: EventSchema, max_bytes: int = 1 << 20) -> None:
        self.schema = schema
        self.max_bytes = max_bytes
        self._arrow = schema.arrow_schema
        self._out_schema = schema.decoded_schema
        self._parse = pa_json.ParseOptions(explicit_schema=self._arrow, unexpected_field_behavior="ignore")
        self._read = pa_json.ReadOptions(use_threads=False, block_size=1 << 26)
        self._floats = [n for n, t in schema.fields.items() if t == "float"]

    def decode(self, values: Sequence[bytes | None], offsets: Sequence[int]) -> DecodedBatch:
        """Decode ``values`` (record values in offset order) into a batch of valid events."""
        if not values:
            return DecodedBatch(self._empty(), [])
        fast = self._decode_fast(values, offsets)
        return fast if fast is not None else self._decode_strict(values, offsets)

    def _empty(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=self._out_schema)

    def _decode_fast(self, values, offsets) -> DecodedBatch | None:
        try:
            buf = b"\n".join(values)
        except TypeError:      # a None value (tombstone)
            return None
        if buf.count(b"\n") != len(values) - 1:
            return None
        if any(not v or len(v) > self.max_bytes for v in values):
            return None
        try:
            buf.decode("utf-8")   # the JSON reader does not reject every invalid UTF-8 sequence
        except UnicodeDecodeError:
            return None
        try:
            table = pa_json.read_json(pa.py_buffer(buf), read_options=self._read, parse_options=self._parse)
        except (pa.ArrowInvalid, UnicodeDecodeError, ValueError):
            return None
        if table.num_rows != len(values) or any(c.null_count for c in table.columns):
            return None
        for name in self._floats:
            col = table.column(name).to_numpy()
            if not np.isfinite(col).all():
                return None
        table = table.append_column(OFFSET_COLUMN, pa.array(np.asarray(offsets, dtype=np.int64)))
        table = table.append_column(RAW_COLUMN, pa.array(values, type=pa.binary()))
        batch = table.combine_chunks().to_batches(max_chunksize=len(values))[0]
        return DecodedBatch(batch, [])

    def _decode_strict(self, values, offsets) -> DecodedBatch:
        fields = self.schema.fields
        columns: dict[str, list] = {n: [] for n in fields}
        good_offsets: list[int] = []
        good_raw: list[bytes] = []
        rejected: list[tuple[int, dl.Reason, str]] = []
        for i, value in enumerate(values):
            why = self._reject_reason(value)
            if why is None:
                try:
                    obj = _loads(value)
                except ValueError as exc:
                    why = (dl.Reason.INVALID_JSON, str(exc)[:200])
                else:
                    why = self._check_object(obj)
            if why is not None:
                rejected.append((i, why[0], why[1]))
                continue
            for name in fields:
                columns[name].append(obj[name])
            good_offsets.append(offsets[i])
            good_raw.append(value)
        arrays = [pa.array(columns[n], type=self._arrow.field(n).type) for n in fields]
        arrays.append(pa.array(good_offsets, type=pa.int64()))
        arrays.append(pa.array(good_raw, type=pa.binary()))
        return DecodedBatch(pa.RecordBatch.from_arrays(arrays, schema=self._out_schema), rejected)

    def _reject_reason(self, value) -> tuple[dl.Reason, str] | None:
        problem = size_problem(value, self.max_bytes)
        if problem:
            return problem
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return dl.Reason.INVALID_UTF8, str(exc)[:200]
        return None

    def _check_object(self, obj) -> tuple[dl.Reason, str] | None:
        if not isinstance(obj, dict):
            return dl.Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
        return check_fields(self.schema, obj)


def size_problem(value: bytes | None, max_bytes: int) -> tuple[dl.Reason, str] | None:
    """(reason, detail) when a record value is empty or larger than ``max_bytes``, else None."""
    if value is None or len(value) == 0:
        return dl.Reason.EMPTY_MESSAGE, "empty record value"
    if len(value) > max_bytes:
        return dl.Reason.OVERSIZED_MESSAGE, f"{len(value)} bytes > limit {max_bytes}"
    return None


def check_fields(schema: EventSchema, obj: dict) -> tuple[dl.Reason, str] | None:
    """(reason, detail) for the first field of ``schema`` that ``obj`` (a decoded record, JSON
    or Avro) lacks or holds a bad value for, else None. Every format's decoder uses this one
    definition of a valid event."""
    for name, kind in schema.fields.items():
        if name not in obj or obj[name] is None:
            return dl.Reason.MISSING_FIELD, f"field {name!r} is missing or null"
        problem = _check_value(kind, obj[name])
        if problem:
            return problem[0], f"field {name!r}: {problem[1]}"
        if kind == "float" and not math.isfinite(obj[name]):
            return dl.Reason.INVALID_VALUE, f"field {name!r} is not finite"
    return None


@dataclass(frozen=True)
class DecoderSpec:
    """Which decoder a job uses, as plain picklable data: engines ship it to their workers and
    call :meth:`build` there. ``format``: "json" or "avro" (Avro needs ``avro_schema``, the
    writer schema's ``.avsc`` path; see ``connectors.avro_events``)."""

    schema: EventSchema = field(default_factory=EventSchema)
    format: str = "json"
    max_bytes: int = 1 << 20
    avro_schema: str | None = None
    avro_wire_format: str = "schemaless"
    avro_schema_id: int | None = None

    def build(self):
        """A JsonEventDecoder or an AvroEventDecoder (same ``decode`` interface)."""
        if self.format == "json":
            return JsonEventDecoder(self.schema, self.max_bytes)
        if self.format == "avro":
            if not self.avro_schema:
                raise ValueError("events.format avro needs events.avro_schema (the writer schema's .avsc file)")
            from connectors.avro_events import AvroEventDecoder

            return AvroEventDecoder(self.schema, self.avro_schema, wire_format=self.avro_wire_format,
                                    schema_id=self.avro_schema_id, max_bytes=self.max_bytes)
        raise ValueError(f"unsupported event format {self.format!r} (use json or avro)")

"""Decoding Avro record values into the same Arrow micro-batches as the JSON decoder.

Two wire formats, both with the writer schema given up front (an ``.avsc`` file; no schema
registry is contacted):

* ``schemaless``: the value is the Avro binary encoding of one record, nothing else;
* ``confluent``: magic byte 0, a 4-byte big-endian schema id, then the Avro binary record
  (Confluent's serializer format). With ``schema_id`` set, records written with another id are
  dead-lettered rather than decoded with a schema they were not written with.

A value that is not a valid encoding under the writer schema (truncated, trailing bytes, wrong
header) becomes a dead letter ``invalid_avro``; a decoded record is then held to the event
schema by the same rules as JSON (``connectors.events.check_fields``).
"""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Sequence

import fastavro
import pyarrow as pa

from connectors import dead_letter as dl
from connectors.events import DecodedBatch, EventSchema, check_fields, size_problem

WIRE_FORMATS = ("schemaless", "confluent")
CONFLUENT_MAGIC = 0
_CONFLUENT_HEADER = struct.Struct(">bI")   # magic byte, schema id


def load_writer_schema(path: str | Path) -> dict:
    """Read and check an ``.avsc`` file (a configuration error raises here, at start-up)."""
    try:
        schema = json.loads(Path(path).read_text())
        fastavro.parse_schema(schema)
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
        raise ValueError(f"Avro writer schema {path}: {exc}") from exc
    return schema


def confluent_frame(schema_id: int, payload: bytes) -> bytes:
    """Wrap an Avro binary record in Confluent's wire format (magic byte + schema id)."""
    return _CONFLUENT_HEADER.pack(CONFLUENT_MAGIC, schema_id) + payload


class AvroEventDecoder:
    """Turns a list of Avro record values into one Arrow RecordBatch plus rejections
    (the interface of :class:`connectors.events.JsonEventDecoder`)."""

    def __init__(self, schema: EventSchema, writer_schema: dict | str | Path, *,
                 wire_format: str = "schemaless", schema_id: int | None = None,
                 max_bytes: int = 1 << 20) -> None:
        if wire_format not in WIRE_FORMATS:
            raise ValueError(f"Avro wire format must be one of {WIRE_FORMATS}, not {wire_format!r}")
        if not isinstance(writer_schema, dict):
            writer_schema = load_writer_schema(writer_schema)
        self._parsed = fastavro.parse_schema(writer_schema)
        names = {f["name"] for f in writer_schema.get("fields", [])} if writer_schema.get("type") == "record" else set()
        missing = [n for n in schema.fields if n not in names]
        if missing:
            raise ValueError(f"the Avro writer schema must be a record with the event fields; it lacks {missing}")
        self.schema = schema
        self.wire_format = wire_format
        self.schema_id = schema_id
        self.max_bytes = max_bytes
        self._out_schema = schema.decoded_schema

    def decode(self, values: Sequence[bytes | None], offsets: Sequence[int]) -> DecodedBatch:
        """Decode ``values`` (record values in offset order) into a batch of valid events."""
        fields = list(self.schema.fields)
        rows: list[dict] = []
        good_offsets: list[int] = []
        good_raw: list[bytes] = []
        rejected: list[tuple[int, str, str]] = []
        for i, value in enumerate(values):
            record, why = self._record(value)
            if why is None:
                why = check_fields(self.schema, record)
            if why is not None:
                rejected.append((i, why[0], why[1]))
                continue
            rows.append({n: record[n] for n in fields})
            good_offsets.append(offsets[i])
            good_raw.append(value)
        batch = pa.RecordBatch.from_pylist(rows, schema=self.schema.arrow_schema)
        batch = pa.RecordBatch.from_arrays(
            list(batch.columns) + [pa.array(good_offsets, pa.int64()), pa.array(good_raw, pa.binary())],
            schema=self._out_schema)
        return DecodedBatch(batch, rejected)

    def _record(self, value: bytes | None) -> tuple[dict | None, tuple[dl.Reason, str] | None]:
        problem = size_problem(value, self.max_bytes)
        if problem:
            return None, problem
        start = 0
        if self.wire_format == "confluent":
            if len(value) < _CONFLUENT_HEADER.size or value[0] != CONFLUENT_MAGIC:
                return None, (dl.Reason.INVALID_AVRO, "not in Confluent wire format (magic byte 0 + 4-byte schema id)")
            _, schema_id = _CONFLUENT_HEADER.unpack_from(value)
            if self.schema_id is not None and schema_id != self.schema_id:
                return None, (dl.Reason.INVALID_AVRO, f"written with schema id {schema_id}, expected {self.schema_id}")
            start = _CONFLUENT_HEADER.size
        buf = io.BytesIO(value)
        buf.seek(start)
        try:
            record = fastavro.schemaless_reader(buf, self._parsed, None)
        except UnicodeDecodeError as exc:
            return None, (dl.Reason.INVALID_UTF8, str(exc)[:200])
        except Exception as exc:  # noqa: BLE001 - fastavro raises EOFError, ValueError, IndexError, ... on garbage
            return None, (dl.Reason.INVALID_AVRO, f"{type(exc).__name__}: {exc}"[:200])
        if buf.tell() != len(value):
            return None, (dl.Reason.INVALID_AVRO, f"{len(value) - buf.tell()} bytes left after the record")
        return record, None

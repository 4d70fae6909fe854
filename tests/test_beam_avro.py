"""Avro event decoding (schemaless and Confluent wire format): the same Arrow micro-batches and
dead-letter reasons as the JSON decoder, selectable from the job config, and through the Beam
pipeline end to end against the embedded broker."""
from __future__ import annotations

import io
import json
import uuid

import fastavro
import numpy as np
import orjson
import pytest

from connectors import dead_letter as dl
from connectors.avro_events import AvroEventDecoder, confluent_frame
from connectors.events import OFFSET_COLUMN, RAW_COLUMN, EventSchema, JsonEventDecoder
from connectors.kafka.partition_reader import RecordChunk
from jobs import demo_data
from jobs.config import load_config
from jobs.producer import produce
from beam_helpers import read_outputs, run_bounded
from job_helpers import offline_scores
from operators import steps

WRITER_SCHEMA = {
    "type": "record", "name": "Transaction", "namespace": "streamscore.test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "entity_id", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": None},   # not in the event schema
    ],
}
# a writer schema whose entity_id may be null: the decoder must dead-letter such records itself
NULLABLE_SCHEMA = {**WRITER_SCHEMA, "fields": [dict(f, type=["null", f["type"]]) if f["name"] == "entity_id" else f
                                               for f in WRITER_SCHEMA["fields"]]}


def avro(record: dict, schema: dict = WRITER_SCHEMA) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def event(i: int, **changes) -> dict:
    return {"id": f"e{i}", "entity_id": i, "amount": 1.5 * i, "ts": 1000 + i, "note": None, **changes}


@pytest.fixture(scope="module")
def schema_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("avro") / "transaction.avsc"
    path.write_text(json.dumps(WRITER_SCHEMA))
    return path


def test_schemaless_records_decode_like_the_same_json(schema_file):
    good = [event(i) for i in range(40)]
    decoded = AvroEventDecoder(EventSchema(), schema_file).decode([avro(e) for e in good], list(range(40)))
    as_json = JsonEventDecoder(EventSchema()).decode([orjson.dumps(e) for e in good], list(range(40)))
    assert decoded.rejected == []
    assert decoded.events.schema == as_json.events.schema
    for name in EventSchema().fields:
        assert decoded.events.column(name).equals(as_json.events.column(name))
    assert decoded.events.column(OFFSET_COLUMN).equals(as_json.events.column(OFFSET_COLUMN))
    assert decoded.events.column(RAW_COLUMN).to_pylist() == [avro(e) for e in good]


BAD_AVRO = {
    "empty": (b"", dl.Reason.EMPTY_MESSAGE),
    "truncated": (avro(event(1))[:-3], dl.Reason.INVALID_AVRO),
    "trailing bytes": (avro(event(1)) + b"\x00\x01", dl.Reason.INVALID_AVRO),
    "garbage": (b"\xff" * 7, dl.Reason.INVALID_AVRO),
    "invalid utf-8 string": (b"\x04\xff\xfe" + avro(event(1))[3:], dl.Reason.INVALID_UTF8),
    "nan amount": (avro(event(1, amount=float("nan"))), dl.Reason.INVALID_VALUE),
    "oversized": (avro(event(1, note="x" * 3000)), dl.Reason.OVERSIZED_MESSAGE),
}


@pytest.mark.parametrize("raw,reason", list(BAD_AVRO.values()), ids=list(BAD_AVRO))
def test_bad_record_is_dead_lettered_with_its_reason_among_good_ones(schema_file, raw, reason):
    decoder = AvroEventDecoder(EventSchema(), schema_file, max_bytes=2000)
    values = [avro(event(i)) for i in range(5)] + [raw] + [avro(event(i)) for i in range(5, 10)]
    out = decoder.decode(values, list(range(100, 111)))
    assert [(i, r) for i, r, _ in out.rejected] == [(5, reason)]
    assert out.events.num_rows == 10
    assert 105 not in out.events.column(OFFSET_COLUMN).to_pylist()


def test_null_in_a_nullable_writer_field_is_a_missing_field():
    decoder = AvroEventDecoder(EventSchema(), NULLABLE_SCHEMA)
    out = decoder.decode([avro(event(1, entity_id=None), NULLABLE_SCHEMA), avro(event(2), NULLABLE_SCHEMA)], [0, 1])
    assert [(i, r) for i, r, _ in out.rejected] == [(0, dl.Reason.MISSING_FIELD)]
    assert out.events.column("entity_id").to_pylist() == [2]


def test_confluent_wire_format_checks_magic_byte_and_schema_id(schema_file):
    decoder = AvroEventDecoder(EventSchema(), schema_file, wire_format="confluent", schema_id=42)
    values = [confluent_frame(42, avro(event(1))), confluent_frame(7, avro(event(2))), avro(event(3)),
              b"\x00\x00"]
    out = decoder.decode(values, [0, 1, 2, 3])
    assert out.events.column("id").to_pylist() == ["e1"]
    rejected = {i: (r, d) for i, r, d in out.rejected}
    assert rejected[1] == (dl.Reason.INVALID_AVRO, "written with schema id 7, expected 42")
    assert rejected[2][0] == dl.Reason.INVALID_AVRO and "Confluent wire format" in rejected[2][1]
    assert rejected[3][0] == dl.Reason.INVALID_AVRO
    any_id = AvroEventDecoder(EventSchema(), schema_file, wire_format="confluent")
    assert any_id.decode(values[:2], [0, 1]).events.num_rows == 2


def test_writer_schema_must_hold_the_event_fields(tmp_path):
    bad = tmp_path / "bad.avsc"
    bad.write_text(json.dumps({"type": "record", "name": "X", "fields": [{"name": "id", "type": "string"}]}))
    with pytest.raises(ValueError, match="lacks"):
        AvroEventDecoder(EventSchema(), bad)
    broken = tmp_path / "broken.avsc"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.avsc"):
        AvroEventDecoder(EventSchema(), broken)


def test_config_selects_the_decoder_for_every_engine(schema_file):
    with pytest.raises(ValueError, match="avro_schema"):
        load_config(None, ["events.format=avro"])
    cfg = load_config(None, ["events.format=avro", f"events.avro_schema={schema_file}",
                             "events.avro_wire_format=confluent", "events.avro_schema_id=3"])
    decoder = cfg.events.decoder_spec().build()
    assert isinstance(decoder, AvroEventDecoder) and decoder.schema_id == 3
    # steps.decode (shared by the Flink source, the Beam pipeline and the plain loop) takes it as is
    chunk = RecordChunk("t", 0, [confluent_frame(3, avro(event(1))), b"junk"], [10, 11])
    batch = steps.decode(decoder, chunk)
    assert batch.events.column("id").to_pylist() == ["e1"]
    assert [(d.reason, d.source) for d in batch.dead_letters] == [(dl.Reason.INVALID_AVRO, "t/0/11")]
    assert isinstance(load_config(None, []).events.decoder_spec().build(), JsonEventDecoder)


def test_beam_pipeline_scores_avro_events_and_dead_letters_bad_ones(stack, schema_file):
    cfg = stack.job_config(f"beam-avro-{uuid.uuid4().hex[:6]}", partitions=2)
    cfg.events.format, cfg.events.avro_schema = "avro", str(schema_file)
    cfg.events.avro_wire_format, cfg.events.avro_schema_id = "confluent", 1
    good = demo_data.events(600, stack.entities, seed=41)
    records = [confluent_frame(1, avro({**e, "ts": 1_700_000_000_000, "note": None})) for e in good]
    records += [b"\x01not-avro", confluent_frame(2, avro(event(1))), confluent_frame(1, b"\x02")]
    coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records)
    run_bounded(cfg, coords)
    tally = read_outputs(cfg, coords)
    assert not tally.missing(set(coords))
    assert [tally.dead_letters.get(c) for c in coords[-3:]] == [dl.Reason.INVALID_AVRO] * 3
    predictions = [tally.predictions[c] for c in coords[:-3]]
    by_id = {e["id"]: e for e in good}
    expected = offline_scores(stack.model_path, stack.features, by_id, [p["event_id"] for p in predictions])
    assert np.abs(np.array([p["score"] for p in predictions]) - expected).max() <= 1e-6

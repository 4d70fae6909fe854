"""The JSON event decoder: the vectorised fast path and the strict per-record path agree, and
every kind of bad record gets its reason whatever else shares its batch."""
from __future__ import annotations

import orjson
import pytest

from connectors import dead_letter as dl
from connectors.events import OFFSET_COLUMN, RAW_COLUMN, EventSchema, JsonEventDecoder

GOOD = [orjson.dumps({"id": f"e{i}", "entity_id": i, "amount": 1.5 * i, "ts": 1000 + i, "extra": {"x": [1]}})
        for i in range(50)]

BAD = {
    b"": dl.Reason.EMPTY_MESSAGE,
    b"x" * 2000: dl.Reason.OVERSIZED_MESSAGE,
    b'{"id": "a\xff", "entity_id": 1, "amount": 1.0, "ts": 1}': dl.Reason.INVALID_UTF8,
    b'{"id": "a", "entity_id": 1,': dl.Reason.INVALID_JSON,
    b'{"id": "a", "entity_id": 1, "amount": NaN, "ts": 1}': dl.Reason.INVALID_VALUE,
    b'[1, 2, 3]': dl.Reason.NOT_AN_OBJECT,
    b'"just a string"': dl.Reason.NOT_AN_OBJECT,
    b'{"id": "a", "amount": 1.0, "ts": 1}': dl.Reason.MISSING_FIELD,
    b'{"id": "a", "entity_id": null, "amount": 1.0, "ts": 1}': dl.Reason.MISSING_FIELD,
    b'{"id": "a", "entity_id": "7", "amount": 1.0, "ts": 1}': dl.Reason.WRONG_TYPE,
    b'{"id": "a", "entity_id": 1.5, "amount": 1.0, "ts": 1}': dl.Reason.WRONG_TYPE,
    b'{"id": "a", "entity_id": true, "amount": 1.0, "ts": 1}': dl.Reason.WRONG_TYPE,
    b'{"id": 5, "entity_id": 1, "amount": 1.0, "ts": 1}': dl.Reason.WRONG_TYPE,
    b'{"id": "a", "entity_id": {"n": 1}, "amount": 1.0, "ts": 1}': dl.Reason.WRONG_TYPE,
    b'{"id": "a", "entity_id": 99999999999999999999999, "amount": 1.0, "ts": 1}': dl.Reason.INVALID_VALUE,
    b'{"id": "a", "entity_id": 1, "amount": 1e999, "ts": 1}': dl.Reason.INVALID_VALUE,
    b'{"id": "a",\n "entity_id": 1, "amount": 1.0, "ts": 1}': None,   # valid, but spans lines
}


@pytest.fixture
def decoder():
    return JsonEventDecoder(EventSchema(), max_bytes=1000)


def test_clean_batch_is_decoded_in_order_with_offsets_and_raw_bytes(decoder):
    out = decoder.decode(GOOD, list(range(100, 150)))
    assert out.rejected == []
    assert out.events.num_rows == 50
    assert out.events.column("id").to_pylist() == [f"e{i}" for i in range(50)]
    assert out.events.column("amount").to_pylist() == [1.5 * i for i in range(50)]
    assert out.events.column(OFFSET_COLUMN).to_pylist() == list(range(100, 150))
    assert out.events.column(RAW_COLUMN).to_pylist() == GOOD
    assert "extra" not in out.events.schema.names


@pytest.mark.parametrize("raw,reason", list(BAD.items()), ids=[r or "multiline" for r in BAD.values()])
def test_each_bad_record_gets_its_reason_alone_and_among_good_ones(decoder, raw, reason):
    alone = decoder.decode([raw], [0])
    mixed = decoder.decode(GOOD[:10] + [raw] + GOOD[10:20], list(range(21)))
    if reason is None:
        assert alone.rejected == [] and alone.events.num_rows == 1
        assert mixed.rejected == [] and mixed.events.num_rows == 21
        return
    assert [r[1] for r in alone.rejected] == [reason]
    assert alone.events.num_rows == 0
    assert [(r[0], r[1]) for r in mixed.rejected] == [(10, reason)]
    assert mixed.events.num_rows == 20
    assert 10 not in mixed.events.column(OFFSET_COLUMN).to_pylist()


def test_int_is_accepted_for_float_fields(decoder):
    out = decoder.decode([b'{"id": "a", "entity_id": 1, "amount": 2, "ts": 1}'], [0])
    assert out.rejected == [] and out.events.column("amount").to_pylist() == [2.0]


def test_tombstone_record_is_dead_lettered(decoder):
    out = decoder.decode([None, GOOD[0]], [0, 1])
    assert [r[:2] for r in out.rejected] == [(0, dl.Reason.EMPTY_MESSAGE)]


def test_schema_rejects_unknown_types():
    with pytest.raises(ValueError, match="unsupported event field types"):
        EventSchema(fields={"id": "string", "entity_id": "int", "ts": "int", "x": "decimal"})
    with pytest.raises(ValueError, match="lacks the field 'ts'"):
        EventSchema(fields={"id": "string", "entity_id": "int"})

"""Dead-letter reasons are one enumeration (``connectors.dead_letter.Reason``) that the decoders,
both engines, the sinks and the README share; no reason is chosen by reading detail text."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from connectors import dead_letter as dl
from connectors.events import EventSchema, check_fields

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_lists_exactly_the_reasons_of_the_enumeration():
    text = README.read_text()
    paragraph = text[text.index("Reasons (`connectors.dead_letter.Reason`"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    assert sorted(re.findall(r"`([a-z0-9_]+)`", paragraph)) == sorted(r.value for r in dl.Reason)


def test_a_dead_letter_takes_only_a_reason_of_the_enumeration():
    letter = dl.DeadLetter(b"x", "unknown_entity", "d", "t", 0, 1)
    assert letter.reason is dl.Reason.UNKNOWN_ENTITY
    assert dict(letter.headers())[dl.REASON_HEADER] == b"unknown_entity"
    with pytest.raises(ValueError, match="entity_unknown"):
        dl.DeadLetter(b"x", "entity_unknown", "d", "t", 0, 1)


@pytest.mark.parametrize("value,reason", [
    ("\ud800", dl.Reason.INVALID_VALUE),          # a lone surrogate: out of Unicode's range
    (2**64, dl.Reason.INVALID_VALUE),
    (float(2**70), dl.Reason.INVALID_VALUE),       # how orjson hands over big integers
    ("range", dl.Reason.WRONG_TYPE),               # a detail text that says "range" decides nothing
    (1.5, dl.Reason.WRONG_TYPE),
])
def test_field_check_reasons_come_from_the_check_not_from_its_text(value, reason):
    schema = EventSchema(fields={"id": "string", "entity_id": "int", "amount": "float", "ts": "int"})
    obj = {"id": "a", "entity_id": value, "amount": 1.0, "ts": 1}
    if isinstance(value, str) and value.startswith("\ud800"):
        obj = {"id": value, "entity_id": 1, "amount": 1.0, "ts": 1}
    got, detail = check_fields(schema, obj)
    assert got is reason, detail

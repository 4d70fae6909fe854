"""Fuzz the event decoder with 10,000 generated hostile events: each gets exactly the expected
dead-letter reason, whatever batch it shares, and no input raises."""
from __future__ import annotations

import random

from connectors.events import EventSchema, JsonEventDecoder
from fuzz_events import MAX_BYTES, FuzzEvents


def test_every_hostile_event_gets_its_reason_in_any_batch():
    records = list(FuzzEvents(entities=1000, seed=5).mixed(bad=10_000, good=2_000))
    decoder = JsonEventDecoder(EventSchema(), max_bytes=MAX_BYTES)
    rng = random.Random(6)
    got: dict[int, str | None] = {}
    start = 0
    while start < len(records):
        size = rng.choice([1, 2, 7, 64, 500, 2000])
        chunk = records[start:start + size]
        offsets = list(range(start, start + len(chunk)))
        decoded = decoder.decode([value for value, _ in chunk], offsets)
        for i, reason, detail in decoded.rejected:
            assert detail, f"reason {reason} without a detail"
            got[offsets[i]] = reason
        for offset in decoded.events.column("_offset").to_pylist():
            got[offset] = None
        start += len(chunk)
    assert len(got) == len(records), "every input is either an event or a dead letter"
    wrong = [(o, records[o][1], got[o], (records[o][0] or b"")[:80]) for o in range(len(records))
             if got[o] != records[o][1] and records[o][1] != "unknown_entity"]
    assert not wrong, f"{len(wrong)} events got the wrong outcome, e.g. {wrong[:5]}"
    # unknown entities are well-formed: the decoder passes them on (the feature store rejects them)
    unknown = [o for o in range(len(records)) if records[o][1] == "unknown_entity"]
    assert unknown and all(got[o] is None for o in unknown)

"""A seeded generator of hostile input events, each with the dead-letter reason it must get
(or None: it is a valid event and must be scored).

The expected reason comes from how each event is built, never from running the decoder, so the
fuzz tests check the decoder and the job against an independent oracle.
"""
from __future__ import annotations

import random
from typing import Iterator

import orjson

from connectors import dead_letter as dl

MAX_BYTES = 64 * 1024      # the fuzz job's events.max_bytes (oversized messages are bigger)
FIELDS = ("id", "entity_id", "amount", "ts")

INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28",
                b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]
NOT_OBJECTS = [b"[]", b"[1, 2, 3]", b"42", b"-1.5e3", b'"a string"', b"true", b"false", b"null",
               b'[{"id": "x", "entity_id": 1, "amount": 1.0, "ts": 1}]']
WRONG_TYPES = {
    "id": [1, 2.5, True, [], {}, ["x"]],
    "entity_id": ["42", "forty-two", 1.5, 2.0, True, False, [1], {"v": 1}],
    "amount": ["1.0", "NaN", True, [1.0], {"v": 1.0}],
    "ts": ["2026-11-21", 1.5, True, [1], {}],
}
INVALID_VALUES = [("amount", b"NaN"), ("amount", b"Infinity"), ("amount", b"-Infinity"), ("amount", b"1e999"),
                  ("amount", b"-1e999"), ("entity_id", str(2**63).encode()), ("entity_id", str(-2**63 - 1).encode()),
                  ("entity_id", str(2**70).encode()), ("ts", str(2**64).encode()), ("id", b'"bad\\ud800"'),
                  ("id", b'"\\udfff"')]


class FuzzEvents:
    """Hostile and valid events for a store with ``entities`` known entity ids (0..entities-1)."""

    def __init__(self, entities: int, seed: int = 0) -> None:
        self.entities = entities
        self.rng = random.Random(seed)
        self.kinds = [getattr(self, name) for name in dir(self) if name.startswith("bad_")]

    def good(self, i: int) -> dict:
        r = self.rng
        return {"id": f"fuzz-{i}", "entity_id": r.randrange(self.entities), "amount": round(r.uniform(0, 5000), 2),
                "ts": 1_700_000_000_000 + i}

    def _encode(self, event: dict) -> bytes:
        return orjson.dumps(event)

    def _with_raw(self, event: dict, name: str, raw: bytes) -> bytes:
        """``event`` as JSON with field ``name``'s value replaced by the raw JSON text ``raw``."""
        parts = [b'"%s": %s' % (k.encode(), raw if k == name else orjson.dumps(v)) for k, v in event.items()]
        return b"{" + b", ".join(parts) + b"}"

    # valid events that look odd: every one of these must be scored
    def valid_odd(self, i: int) -> bytes:
        event = self.good(i)
        r = self.rng
        choice = r.randrange(6)
        if choice == 0:      # extra fields, nested garbage in them
            event["extra"] = {"a": [1, {"b": None, "c": [[[[["deep"]]]]]}], "s": "x" * r.randrange(100)}
        elif choice == 1:    # a huge (but allowed) id string
            event["id"] = f"fuzz-{i}-" + "x" * r.randrange(1000, 20_000)
        elif choice == 2:    # an integer amount (a valid float), a huge finite amount
            event["amount"] = r.choice([0, 7, 10**15, 1.7e308])
        elif choice == 3:    # fields in another order, unicode in the id
            event = dict(reversed(list(event.items())))
            event["id"] = f"fuzz-{i}-ünïcødé-✓"
        elif choice == 4:    # whitespace around the JSON
            return b" \n\t" + self._encode(event) + b"  \n"
        else:                # null in an extra field
            event["note"] = None
        return self._encode(event)

    # hostile events: (bytes or None, reason)
    def bad_empty(self, i: int) -> tuple[bytes | None, str]:
        return self.rng.choice([b"", None]), dl.Reason.EMPTY_MESSAGE

    def bad_oversized(self, i: int) -> tuple[bytes, str]:
        event = self.good(i)
        event["padding"] = "p" * (MAX_BYTES + self.rng.randrange(1, 100_000))
        return self._encode(event), dl.Reason.OVERSIZED_MESSAGE

    def bad_utf8(self, i: int) -> tuple[bytes, str]:
        raw = self._encode(self.good(i))
        at = self.rng.randrange(1, len(raw) - 1)
        return raw[:at] + self.rng.choice(INVALID_UTF8) + raw[at:], dl.Reason.INVALID_UTF8

    def bad_json(self, i: int) -> tuple[bytes, str]:
        r = self.rng
        raw = self._encode(self.good(i))
        choice = r.randrange(7)
        if choice == 0:                            # truncated
            return raw[:r.randrange(1, len(raw) - 1)], dl.Reason.INVALID_JSON
        if choice == 1:                            # trailing comma
            return raw[:-1] + b",}", dl.Reason.INVALID_JSON
        if choice == 2:                            # unquoted keys
            return raw.replace(b'"id"', b"id"), dl.Reason.INVALID_JSON
        if choice == 3:                            # single quotes
            return raw.replace(b'"', b"'"), dl.Reason.INVALID_JSON
        if choice == 4:                            # nested far deeper than any parser's stack
            depth = r.randrange(2_000, MAX_BYTES // 2)
            return b"[" * depth + b"]" * depth, dl.Reason.INVALID_JSON
        if choice == 5:                            # two objects in one record
            return raw + b"\n" + raw, dl.Reason.INVALID_JSON
        return b"{" + bytes(r.randrange(0x20, 0x7F) for _ in range(r.randrange(1, 200))).replace(b"}", b"") \
            + b"garbage", dl.Reason.INVALID_JSON          # printable garbage

    def bad_not_object(self, i: int) -> tuple[bytes, str]:
        return self.rng.choice(NOT_OBJECTS), dl.Reason.NOT_AN_OBJECT

    def bad_missing(self, i: int) -> tuple[bytes, str]:
        event = self.good(i)
        for name in self.rng.sample(FIELDS, self.rng.randrange(1, len(FIELDS) + 1)):
            if self.rng.random() < 0.5:
                del event[name]
            else:
                event[name] = None
        return self._encode(event), dl.Reason.MISSING_FIELD

    def bad_type(self, i: int) -> tuple[bytes, str]:
        event = self.good(i)
        name = self.rng.choice(FIELDS)
        event[name] = self.rng.choice(WRONG_TYPES[name])
        return self._encode(event), dl.Reason.WRONG_TYPE

    def bad_value(self, i: int) -> tuple[bytes, str]:
        name, raw = self.rng.choice(INVALID_VALUES)
        return self._with_raw(self.good(i), name, raw), dl.Reason.INVALID_VALUE

    def bad_unknown_entity(self, i: int) -> tuple[bytes, str]:
        event = self.good(i)
        event["entity_id"] = self.rng.choice([self.entities + self.rng.randrange(10**9), -1 - self.rng.randrange(10**6)])
        return self._encode(event), dl.Reason.UNKNOWN_ENTITY

    def mixed(self, bad: int, good: int) -> Iterator[tuple[bytes | None, str | None]]:
        """``bad`` hostile events (every kind in turn) and ``good`` valid ones (a fifth of them
        odd-looking), shuffled; each with its expected reason (None: must be scored)."""
        records: list[tuple[bytes | None, str | None]] = []
        for i in range(bad):
            records.append(self.kinds[i % len(self.kinds)](i))
        for j in range(good):
            i = bad + j
            records.append((self.valid_odd(i) if j % 5 == 0 else self._encode(self.good(i)), None))
        self.rng.shuffle(records)
        return iter(records)

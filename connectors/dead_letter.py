"""Dead letters: an input record that cannot be scored, with its original bytes, a
machine-readable reason and where it came from. Nothing is dropped silently."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Reason(enum.StrEnum):
    """Why a record became a dead letter: the ``streamscore.reason`` header of a DLQ record. The
    one list every engine, sink and document uses (README "Output records" is checked against
    it by tests/test_dead_letter_reasons.py)."""
    EMPTY_MESSAGE = "empty_message"
    OVERSIZED_MESSAGE = "oversized_message"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_AVRO = "invalid_avro"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"                  # NaN, inf, integers beyond 64 bits, lone surrogates
    UNKNOWN_ENTITY = "unknown_entity"                # the feature store does not know the entity
    FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"   # after the retry policy gave up
    MODEL_INPUT_REJECTED = "model_input_rejected"    # the model's schema validation refused the row
    SCORING_ERROR = "scoring_error"                  # the model runtime failed on the batch
    NO_ROUTE = "no_route"                            # routes configured, the event matches none, no default


REASON_HEADER = "streamscore.reason"
DETAIL_HEADER = "streamscore.detail"
SOURCE_HEADER = "streamscore.source"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes | None   # the original record bytes, untouched
    reason: Reason        # machine-readable (a string that is not a Reason is refused)
    detail: str           # human-readable explanation (a model's validation reason goes here)
    topic: str
    partition: int
    offset: int

    def __post_init__(self) -> None:
        if type(self.reason) is not Reason:
            object.__setattr__(self, "reason", Reason(self.reason))

    @property
    def source(self) -> str:
        """Source coordinates, also the deterministic id of the input record."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (REASON_HEADER, self.reason.encode()),
            (DETAIL_HEADER, self.detail.encode("utf-8", "replace")[:1024]),
            (SOURCE_HEADER, self.source.encode()),
        ]

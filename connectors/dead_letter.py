"""Dead letters: an input record that cannot be scored, with its original bytes, a
machine-readable reason and where it came from. Nothing is dropped silently."""
from __future__ import annotations

from dataclasses import dataclass

# Reasons, machine-readable (the ``streamscore.reason`` header of a DLQ record).
EMPTY = "empty_message"
OVERSIZED = "oversized_message"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
INVALID_AVRO = "invalid_avro"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
INVALID_VALUE = "invalid_value"          # NaN / inf / out of range
UNKNOWN_ENTITY = "unknown_entity"
FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"
MODEL_INPUT_REJECTED = "model_input_rejected"   # the model's schema validation refused the row
SCORING_ERROR = "scoring_error"                 # the model runtime failed on the batch

REASON_HEADER = "streamscore.reason"
DETAIL_HEADER = "streamscore.detail"
SOURCE_HEADER = "streamscore.source"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes | None   # the original record bytes, untouched
    reason: str           # one of the constants above (or a model validation reason)
    detail: str           # human-readable explanation
    topic: str
    partition: int
    offset: int

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

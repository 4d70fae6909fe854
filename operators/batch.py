"""The unit that flows through every operator: an Arrow micro-batch of events from one
partition, plus the dead letters already split off it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from connectors.dead_letter import DeadLetter, Reason
from connectors.events import OFFSET_COLUMN, RAW_COLUMN


def now_ms() -> float:
    return time.time() * 1000.0


@dataclass
class MicroBatch:
    topic: str
    partition: int
    events: pa.RecordBatch               # event fields + _offset + _raw (+ features once enriched)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    polled_at_ms: float = field(default_factory=now_ms)
    features: str = ""                   # ``name@version`` of the feature snapshot that enriched it

    @property
    def num_records(self) -> int:
        """Every input record this batch accounts for (valid events + dead letters)."""
        return self.events.num_rows + len(self.dead_letters)

    def split_off(self, reject: np.ndarray, reason: Reason, detail: str | list[str]) -> "MicroBatch":
        """A copy where the events selected by the boolean mask ``reject`` became dead letters
        with ``reason``; ``detail`` is one text for all, or one per rejected event."""
        if not reject.any():
            return self
        rows = np.flatnonzero(reject)
        raws = self.events.column(RAW_COLUMN).take(pa.array(rows)).to_pylist()
        offsets = self.events.column(OFFSET_COLUMN).to_numpy()[rows]
        details = detail if isinstance(detail, list) else [detail] * len(rows)
        letters = [DeadLetter(raw, reason, d, self.topic, self.partition, int(o))
                   for raw, d, o in zip(raws, details, offsets)]
        kept = self.events.filter(pa.array(~reject))
        return MicroBatch(self.topic, self.partition, kept, self.dead_letters + letters, self.polled_at_ms,
                          self.features)

    def with_events(self, events: pa.RecordBatch, features: str | None = None) -> "MicroBatch":
        """The same batch with other events (and, when given, the features' lineage)."""
        return MicroBatch(self.topic, self.partition, events, self.dead_letters, self.polled_at_ms,
                          self.features if features is None else features)

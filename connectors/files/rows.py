"""Dead letters as Arrow rows, for files (the Kafka DLQ carries the same fields as headers)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from connectors.dead_letter import DeadLetter

DEAD_LETTER_SCHEMA = pa.schema([
    ("source", pa.string()),          # topic/partition/offset: the input record's id
    ("topic", pa.string()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("value", pa.binary()),           # the original record bytes, untouched
])


def dead_letter_rows(letters: Sequence[DeadLetter]) -> tuple[pa.RecordBatch, np.ndarray]:
    """The dead letters as a record batch in offset order (the pipeline's steps append them out of
    order), and their offsets (sequence numbers for the writer)."""
    letters = sorted(letters, key=lambda d: d.offset)
    offsets = np.fromiter((d.offset for d in letters), dtype=np.int64, count=len(letters))
    batch = pa.RecordBatch.from_arrays([
        pa.array([d.source for d in letters], pa.string()),
        pa.array([d.topic for d in letters], pa.string()),
        pa.array([d.partition for d in letters], pa.int32()),
        pa.array(offsets, pa.int64()),
        pa.array([d.reason for d in letters], pa.string()),
        pa.array([d.detail for d in letters], pa.string()),
        pa.array([d.value for d in letters], pa.binary()),
    ], schema=DEAD_LETTER_SCHEMA)
    return batch, offsets

"""Encoding Arrow record batches as JSON record values."""
from __future__ import annotations

import orjson
import pyarrow as pa


def record_batch_to_json(batch: pa.RecordBatch) -> list[bytes]:
    """One compact JSON object per row (column name → value)."""
    names = batch.schema.names
    columns = [c.to_pylist() for c in batch.columns]
    dumps = orjson.dumps
    return [dumps(dict(zip(names, row))) for row in zip(*columns)]

"""Encoding Arrow record batches as JSON record values."""
from __future__ import annotations

import orjson
import pyarrow as pa
import pyarrow.types as pat


def _numpy_converts_exactly(column: pa.Array) -> bool:
    """Whether ``column.to_numpy().tolist()`` gives the same Python values as ``to_pylist()``:
    no nulls (numpy would turn them into NaN) and a plain number, bool or string type."""
    t = column.type
    return column.null_count == 0 and (pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t)
                                       or pat.is_string(t) or pat.is_large_string(t))


def column_values(column: pa.Array) -> list:
    """The column as a list of Python values, as ``to_pylist()`` gives them. For null-free number,
    bool and string columns through numpy, ~10-40x faster than pyarrow 11's per-value ``as_py()``
    (0.33-0.7 µs a value), which was the biggest cost of encoding predictions."""
    if _numpy_converts_exactly(column):
        return column.to_numpy(zero_copy_only=False).tolist()
    return column.to_pylist()


def record_batch_to_json(batch: pa.RecordBatch) -> list[bytes]:
    """One compact JSON object per row (column name → value)."""
    names = batch.schema.names
    columns = [column_values(c) for c in batch.columns]
    dumps = orjson.dumps
    return [dumps(dict(zip(names, row))) for row in zip(*columns)]

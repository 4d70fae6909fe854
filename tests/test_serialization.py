"""JSON encoding of record batches: the fast column conversion gives exactly pyarrow's values."""
import math

import orjson
import pyarrow as pa
import pytest

from connectors.serialization import column_values, record_batch_to_json

COLUMNS = [
    pa.array([1, None, 3]), pa.array([1.5, float("nan"), -0.0, 1e300, float("inf")]),
    pa.array(["é", "quote\" and \\ backslash", "日本", ""]), pa.array([True, False]),
    pa.array([1, -2], pa.int8()), pa.array([2**63 - 1, -2**63]), pa.array([2**64 - 1], pa.uint64()),
    pa.array([1.1, 2.2], pa.float32()), pa.array(["a", None]), pa.array([1, 2], pa.timestamp("ms")),
    pa.array([b"x", None]), pa.array(["a", "b"], pa.large_string()), pa.array(["a", "b", "a"]).dictionary_encode(),
    pa.array([], pa.int64()), pa.array([], pa.string()), pa.array(list(range(10))).slice(3, 4),
]


def _same(a, b) -> bool:
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


@pytest.mark.parametrize("column", COLUMNS, ids=lambda c: str(c.type))
def test_column_values_equal_to_pylist(column):
    fast, reference = column_values(column), column.to_pylist()
    assert len(fast) == len(reference) and all(_same(a, b) for a, b in zip(fast, reference))


def test_record_batch_to_json_rows():
    batch = pa.RecordBatch.from_arrays([pa.array(["p-1", "p-\"2"]), pa.array([0.25, float("nan")]), pa.array([7, None])],
                                       names=["id", "score", "n"])
    assert [orjson.loads(v) for v in record_batch_to_json(batch)] == [{"id": "p-1", "score": 0.25, "n": 7},
                                                                      {"id": "p-\"2", "score": None, "n": None}]

"""Writing the rows of a committed file: Parquet or JSON lines."""
from __future__ import annotations

import base64

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connectors.serialization import record_batch_to_json


def write_file(fs: pafs.FileSystem, path: str, batches: list[pa.RecordBatch], fmt: str) -> int:
    """Write ``batches`` to ``path`` as ``fmt``; returns the bytes written. Batches whose schemas
    differ (an upgrade changed the output while a file was open) are merged, missing columns null."""
    if len({b.schema for b in batches}) > 1:
        tables = [pa.Table.from_batches([b]) for b in batches]
        batches = pa.concat_tables(tables, promote=True).combine_chunks().to_batches()
    with fs.open_output_stream(path) as out:
        if fmt == "parquet":
            with pq.ParquetWriter(out, batches[0].schema, compression="zstd") as writer:
                for batch in batches:
                    writer.write_batch(batch)
        elif fmt == "jsonl":
            for batch in batches:
                lines = record_batch_to_json(_text_only(batch))
                out.write(b"\n".join(lines) + b"\n")
        else:
            raise ValueError(f"unknown file format {fmt!r}")
        return out.tell()


def _text_only(batch: pa.RecordBatch) -> pa.RecordBatch:
    """JSON has no bytes: binary columns are written base64-encoded."""
    if not any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in batch.schema):
        return batch
    columns = []
    for field, column in zip(batch.schema, batch.columns):
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            encoded = [None if v is None else base64.b64encode(v).decode() for v in column.to_pylist()]
            column = pa.array(encoded, pa.string())
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def read_jsonl(fs: pafs.FileSystem, path: str) -> pa.Table:
    """Read a JSON-lines file back (tests, tools)."""
    import pyarrow.json as pj

    with fs.open_input_stream(path) as f:
        data = f.read()
    if not data:
        return pa.table({})
    return pj.read_json(pa.BufferReader(data))


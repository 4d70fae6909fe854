"""Fixed-width packed feature rows, shared by every backend.

A row is the features of one key packed as a numpy structured record (for 32 float32 features:
128 bytes). The shared-memory stores keep one contiguous array of records; Redis and PostgreSQL
keep each record as one binary value. The same codec turns selected records back into an Arrow
RecordBatch (or a 2-D matrix when every feature has one dtype), so all backends answer alike.

Building a RecordBatch column by column from Python costs ~1.5 µs per column (``from_buffers``)
plus ~1 µs per column in ``RecordBatch.from_arrays``: ~90 µs for 32 columns, whatever the row
count. When every feature shares one (non-boolean) dtype and no row is null, the codec instead
writes the transposed rows behind a cached Arrow IPC message header for that row count and lets
Arrow's C++ reader build all columns in one call (~10 µs for 32 columns).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from connectors.feature_store.base import FeatureStoreError

MAX_LAYOUTS = 4096  # cached IPC headers per codec (~1.7 KiB each for 32 columns)


def _check_field(f: pa.Field) -> np.dtype:
    t = f.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return np.dtype(t.to_pandas_dtype())
    raise FeatureStoreError(f"feature {f.name!r} has type {t}: only fixed-width numeric and "
                            "boolean features can be stored (encode others before loading)")


class RowCodec:
    """Packs/unpacks the rows of one feature schema."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.names = list(schema.names)
        self.types = [f.type for f in schema]
        self.dtype = np.dtype([(f.name, _check_field(f)) for f in schema])
        self.itemsize = self.dtype.itemsize
        kinds = {self.dtype.fields[n][0] for n in self.names}
        # one common dtype (e.g. all float32): records are rows of a 2-D matrix
        self.matrix_dtype: np.dtype | None = kinds.pop() if len(kinds) == 1 else None
        # the schema of every batch the codec builds (no field metadata, nullable)
        self.batch_schema = pa.schema([(n, t) for n, t in zip(self.names, self.types)])
        # whether matrices can go through the IPC path (Arrow booleans are bit-packed)
        self.ipc_ok = self.matrix_dtype is not None and self.matrix_dtype != np.bool_ and bool(self.names)
        self._layouts: dict[int, tuple[np.ndarray, int]] = {}  # row count -> IPC header, padded length

    # ---- packing (loaders) -------------------------------------------------------------------
    def pack(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Structured array of the feature columns of ``table`` (nulls: NaN, or an error)."""
        out = np.empty(table.num_rows, dtype=self.dtype)
        for name in self.names:
            col = table.column(name)
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
            col = col.cast(self.schema.field(name).type)
            if col.null_count:
                if not np.issubdtype(self.dtype.fields[name][0], np.floating):
                    raise FeatureStoreError(f"feature {name!r} has {col.null_count} nulls; only "
                                            "float features may be null (stored as NaN)")
                col = col.fill_null(float("nan"))
            out[name] = col.to_numpy(zero_copy_only=False)
        return out

    def to_bytes_list(self, records: np.ndarray) -> list[bytes]:
        """One ``bytes`` value per record (Redis, PostgreSQL)."""
        raw = records.tobytes()
        n = self.itemsize
        return [raw[i:i + n] for i in range(0, len(raw), n)]

    def from_bytes_list(self, values: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """Records and found mask from per-key values (``None`` = missing)."""
        n = len(values)
        if None in values:
            found = np.array([v is not None for v in values], dtype=bool)
            blank = b"\0" * self.itemsize
            values = [v if v is not None else blank for v in values]
        else:
            found = np.ones(n, dtype=bool)
        raw = b"".join(values)
        if len(raw) != n * self.itemsize:
            raise FeatureStoreError("stored row has the wrong size for this schema "
                                    "(written with another schema?)")
        return np.frombuffer(raw, dtype=self.dtype), found

    # ---- unpacking (lookups) -----------------------------------------------------------------
    def to_batch(self, records: np.ndarray, found: np.ndarray) -> pa.RecordBatch:
        """RecordBatch of ``records``; rows not ``found`` are null."""
        n = len(records)
        if self.ipc_ok and bool(found.all()):
            return self.matrix_batch(records.view(self.matrix_dtype).reshape(n, len(self.names)))
        validity = None if bool(found.all()) else pa.py_buffer(np.packbits(found, bitorder="little"))
        if self.matrix_dtype is not None and self.matrix_dtype != np.bool_:
            # one transpose, one buffer, each column a zero-copy slice of it
            matrix = records.view(self.matrix_dtype).reshape(n, len(self.names))
            buf = pa.py_buffer(np.ascontiguousarray(matrix.T))
            if validity is not None:  # the offset applies to the bitmap too: tile it per column
                validity = pa.py_buffer(np.packbits(np.tile(found, len(self.names)), bitorder="little"))
            arrays = [pa.Array.from_buffers(t, n, [validity, buf], offset=i * n)
                      for i, t in enumerate(self.types)]
            return pa.RecordBatch.from_arrays(arrays, names=self.names)
        arrays = []
        for name, ftype in zip(self.names, self.types):
            values = np.ascontiguousarray(records[name])
            if values.dtype == np.bool_:
                arrays.append(pa.array(values, type=ftype, mask=None if validity is None else ~found))
            else:
                arrays.append(pa.Array.from_buffers(ftype, n, [validity, pa.py_buffer(values)]))
        return pa.RecordBatch.from_arrays(arrays, names=self.names)

    def matrix_batch(self, matrix: np.ndarray) -> pa.RecordBatch:
        """RecordBatch of an (n, features) matrix of ``matrix_dtype`` without nulls (needs
        ``ipc_ok``): the columns are written, transposed, after a cached IPC header for n rows
        and read back by Arrow in one call. The batch owns a fresh buffer (no shared memory)."""
        n = len(matrix)
        prefix, padded = self._ipc_layout(n)
        out = np.empty(len(prefix) + len(self.names) * padded * self.matrix_dtype.itemsize, dtype=np.uint8)
        out[:len(prefix)] = prefix
        body = out[len(prefix):].view(self.matrix_dtype).reshape(len(self.names), padded)
        body[:, :n] = matrix.T
        body[:, n:] = 0  # Arrow's 8-byte padding: no uninitialised bytes behind the batch
        return pa.ipc.read_record_batch(pa.py_buffer(out), self.batch_schema)

    def _ipc_layout(self, n: int) -> tuple[np.ndarray, int]:
        layout = self._layouts.get(n)
        if layout is None:
            if len(self._layouts) >= MAX_LAYOUTS:
                self._layouts.clear()
            layout = self._layouts[n] = self._new_ipc_layout(n)
        return layout

    def _new_ipc_layout(self, n: int) -> tuple[np.ndarray, int]:
        """The encapsulated IPC message header of an n-row batch of this schema, and the padded
        per-column length (Arrow pads each buffer to 8 bytes): read off a serialised template."""
        # from raw buffers: pa.array(ndarray) imports pandas (half a second of a CLI call's start-up)
        zeros = pa.Array.from_buffers(pa.from_numpy_dtype(self.matrix_dtype), n,
                                      [None, pa.py_buffer(np.zeros(n, dtype=self.matrix_dtype))])
        message = pa.RecordBatch.from_arrays([zeros] * len(self.names), schema=self.batch_schema).serialize()
        body = pa.ipc.read_message(message).body.size
        item = self.matrix_dtype.itemsize
        padded = -(-n * item // 8) * 8 // item
        if body != len(self.names) * padded * item:  # not the layout assumed above: refuse loudly
            raise FeatureStoreError(f"unexpected Arrow IPC layout ({body} body bytes for {n} rows)")
        return np.frombuffer(message, dtype=np.uint8, count=message.size - body).copy(), padded

    def to_matrix(self, records: np.ndarray, found: np.ndarray) -> np.ndarray:
        """(n, features) matrix; rows of missing keys are NaN (floats) or 0."""
        if self.matrix_dtype is None:
            raise FeatureStoreError("lookup_numpy needs every feature to have the same dtype")
        matrix = records.view(self.matrix_dtype).reshape(len(records), len(self.names))
        return self.blank_missing(matrix, found)

    def blank_missing(self, matrix: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Overwrite the rows of missing keys with NaN (floats) or 0."""
        if found.all():
            return matrix
        if not matrix.flags.writeable:
            matrix = matrix.copy()
        matrix[~found] = _null_value(self.matrix_dtype)
        return matrix


def _null_value(dtype: np.dtype) -> Any:
    return np.nan if np.issubdtype(dtype, np.floating) else 0


def iter_chunks(n: int, size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)

"""Staging segments: the rows of a not-yet-committed file, durable after every write.

A segment is an Arrow IPC stream under ``_staging/<writer>/``. After each write the stream is
flushed and its length recorded; the engine checkpoints ``(path, length)``. After a crash the
first ``length`` bytes are exactly the rows written before that checkpoint: whatever follows
(rows the engine will replay, a torn message) is ignored.

Local files and HDFS keep one segment open across writes (flush = bytes handed to the OS /
``hflush`` to the datanodes). Object stores (S3, GCS) make bytes durable only when an object is
closed, so there every write is its own segment.
"""
from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.fs as pafs

# filesystems whose flush() makes written bytes survive the writer process
_FLUSH_DURABLE = {"local", "hdfs"}


class StagingSegment:
    """One Arrow IPC stream being appended to."""

    def __init__(self, fs: pafs.FileSystem, directory: str, schema: pa.Schema) -> None:
        self.path = f"{directory}/{uuid.uuid4().hex}.arrows"
        self.schema = schema
        self.length = 0
        self._keep_open = fs.type_name in _FLUSH_DURABLE
        self._stream = fs.open_output_stream(self.path)
        self._writer = pa.ipc.new_stream(self._stream, schema)

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def write(self, batch: pa.RecordBatch) -> int:
        """Append ``batch``; when this returns, the segment's first ``length`` bytes are durable.
        Returns the bytes the batch took."""
        before = self.length
        self._writer.write_batch(batch)
        if self._keep_open:
            self._stream.flush()
            self.length = self._stream.tell()
        else:
            self.close()
        return self.length - before

    def close(self) -> None:
        """Finish the stream (its end-of-stream marker lies beyond ``length``)."""
        if self._writer is None:
            return
        self.length = self._stream.tell()     # what the rows took, end marker excluded
        self._writer.close()
        self._stream.close()
        self._writer = self._stream = None


def read_segment(fs: pafs.FileSystem, path: str, length: int) -> list[pa.RecordBatch]:
    """The record batches in the first ``length`` bytes of a segment."""
    with fs.open_input_stream(path) as f:
        data = f.read(length)
    if len(data) < length:
        raise IOError(f"staging segment {path} holds {len(data)} bytes, the checkpoint recorded {length}")
    return list(pa.ipc.open_stream(pa.BufferReader(data)))

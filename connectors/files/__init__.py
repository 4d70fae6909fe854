"""Exactly-once rolling files on any ``pyarrow.fs`` filesystem (local, HDFS, S3), engine-independent.

``RollingFileWriter(target, writer_id, state)`` stages rows durably, commits Parquet or JSON-lines
files atomically into time-partitioned directories, and recovers from its last checkpointed
``state()``; see :mod:`connectors.files.writer` for the protocol.
"""
from connectors.files.rows import DEAD_LETTER_SCHEMA, dead_letter_rows
from connectors.files.target import FileTarget, parse_part_name
from connectors.files.writer import Commit, CommittedIndex, RollingFileWriter

__all__ = ["FileTarget", "RollingFileWriter", "CommittedIndex", "Commit", "parse_part_name",
           "dead_letter_rows", "DEAD_LETTER_SCHEMA"]

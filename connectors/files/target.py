"""Where one dataset is written and how its files are named.

Layout under the target's root (any ``pyarrow.fs`` URI: ``file://``, ``hdfs://`` (needs libhdfs), ``s3://``;
or ``webhdfs://namenode:http-port/path``, HDFS over HTTP, see :mod:`connectors.files.webhdfs`)::

    date=2024-05-01/hour=13/part-<writer>-<first:020d>-<last:020d>.parquet   committed, visible
    _staging/<writer>/...                                                      in progress, hidden

A committed file holds the rows of one writer (e.g. one Kafka partition) whose sequence numbers
(e.g. offsets) run from ``first`` to ``last``. Readers (``pyarrow.dataset``, Spark, Hive) skip
paths starting with ``_`` or ``.``, so staging files are never read as data.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

import pyarrow.fs as pafs

from connectors.files.webhdfs import SCHEMES as WEBHDFS_SCHEMES, webhdfs_filesystem

STAGING_DIR = "_staging"
EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl"}
_PART = re.compile(r"^part-(?P<writer>.+)-(?P<first>\d{20})-(?P<last>\d{20})\.(?:parquet|jsonl)$")
# writer ids become file and directory names: keep them to a portable alphabet
_WRITER_ID = re.compile(r"^[A-Za-z0-9._=-]+$")


@dataclass(frozen=True)
class PartName:
    writer: str
    first: int
    last: int


@dataclass(frozen=True)
class FileTarget:
    """A dataset directory and its write policy. Picklable (engines ship it to workers)."""

    uri: str
    format: Literal["parquet", "jsonl"] = "parquet"
    partitioning: str = "date=%Y-%m-%d/hour=%H"    # strftime of the UTC processing time
    roll_bytes: int = 128 << 20                     # uncompressed Arrow bytes of an open file
    roll_interval_s: float = 300.0                  # oldest an open file gets before it is committed

    def __post_init__(self) -> None:
        if self.format not in EXTENSIONS:
            raise ValueError(f"unknown file format {self.format!r} (parquet or jsonl)")
        if self.roll_bytes <= 0 or self.roll_interval_s <= 0:
            raise ValueError("roll_bytes and roll_interval_s must be positive")

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """The ``pyarrow.fs`` filesystem and the root path inside it."""
        if self.uri.partition("://")[0].lower() in WEBHDFS_SCHEMES:
            fs, root = webhdfs_filesystem(self.uri)
        else:
            fs, root = pafs.FileSystem.from_uri(self.uri)
        return fs, root.rstrip("/")

    def bucket(self, now_s: float) -> str:
        """The partition directory (relative) for files opened at ``now_s``."""
        return time.strftime(self.partitioning, time.gmtime(now_s))

    def part_name(self, writer: str, first: int, last: int) -> str:
        return f"part-{writer}-{first:020d}-{last:020d}.{EXTENSIONS[self.format]}"


def parse_part_name(basename: str) -> PartName | None:
    """``part-<writer>-<first>-<last>.<ext>`` → its fields; anything else → None."""
    m = _PART.match(basename)
    if m is None:
        return None
    return PartName(m["writer"], int(m["first"]), int(m["last"]))


def check_writer_id(writer: str) -> str:
    if not _WRITER_ID.match(writer):
        raise ValueError(f"writer id {writer!r} must match {_WRITER_ID.pattern} (it names files)")
    return writer


def staging_dir(root: str, writer: str) -> str:
    return f"{root}/{STAGING_DIR}/{writer}"

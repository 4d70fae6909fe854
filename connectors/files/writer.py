"""Exactly-once rolling files for one writer (e.g. one Kafka partition), engine-independent.

The protocol (the engine adapter only stores :meth:`RollingFileWriter.state` in its checkpoints
and hands it back on restore):

1. Rows arrive with increasing sequence numbers (Kafka offsets). Each write is appended to a
   staging segment and made durable before :meth:`write` returns, so a checkpoint taken after it
   covers rows that exist on the filesystem; the state records ``(segment, length)``.
2. A commit (roll by size, age, partition change or schema change) writes the committed file under
   a temporary name in ``_staging/`` and moves it to ``<bucket>/part-<writer>-<first>-<last>.<ext>``:
   readers see a whole file or nothing. Only then are its segments deleted.
3. The committed files' names are the fence: every row whose sequence number is at most the
   highest committed ``last`` of its writer is already in a committed file. After a restore the
   writer drops the open file of the restored state if a later commit already holds it, skips
   replayed rows up to the fence, and deletes orphaned staging files. So a crash at any point —
   mid-write, mid-commit, between commit and checkpoint — leaves every row in exactly one
   committed file once the input is replayed, and nothing half-written visible.

Because of the fence a commit is safe at any time, not only after a checkpoint: the writer
commits as soon as a roll condition holds, and on :meth:`close`.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from connectors.files.formats import write_file
from connectors.files.staging import StagingSegment, read_segment
from connectors.files.target import STAGING_DIR, FileTarget, check_writer_id, parse_part_name, staging_dir

log = logging.getLogger(__name__)


class CommittedIndex:
    """The highest committed sequence number of every writer of a target, read once from the
    committed file names and then kept up to date by the writers of this process."""

    def __init__(self, target: FileTarget) -> None:
        self.target = target
        self.fs, self.root = target.filesystem()
        self._high: dict[str, int] | None = None

    def high(self, writer: str) -> int:
        if self._high is None:
            self._high = self._scan()
        return self._high.get(writer, -1)

    def record(self, writer: str, last: int) -> None:
        if self._high is not None:
            self._high[writer] = max(last, self._high.get(writer, -1))

    def _scan(self) -> dict[str, int]:
        high: dict[str, int] = {}
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        staging = f"{self.root}/{STAGING_DIR}/"
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or info.path.startswith(staging):
                continue
            part = parse_part_name(info.base_name)
            if part is not None:
                high[part.writer] = max(part.last, high.get(part.writer, -1))
        return high


@dataclass
class Commit:
    """A file made visible."""

    path: str
    rows: int
    bytes: int
    first: int
    last: int
    seconds: float


@dataclass
class _OpenFile:
    bucket: str
    opened_at: float
    first: int
    last: int
    rows: int = 0
    nbytes: int = 0
    segments: list[list[Any]] = field(default_factory=list)    # [path, durable length]

    def to_state(self) -> dict:
        return {"bucket": self.bucket, "opened_at": self.opened_at, "first": self.first, "last": self.last,
                "rows": self.rows, "bytes": self.nbytes, "segments": [list(s) for s in self.segments]}

    @classmethod
    def from_state(cls, s: dict) -> "_OpenFile":
        return cls(s["bucket"], s["opened_at"], s["first"], s["last"], s["rows"], s["bytes"],
                   [list(x) for x in s["segments"]])


class RollingFileWriter:
    """Writes one writer's rows into rolling, exactly-once committed files of a target."""

    def __init__(self, target: FileTarget, writer: str, state: dict | None = None,
                 index: CommittedIndex | None = None) -> None:
        self.target = target
        self.writer = check_writer_id(writer)
        self.index = index or CommittedIndex(target)
        self.fs, self.root = self.index.fs, self.index.root
        self._staging = staging_dir(self.root, self.writer)
        self._segment: StagingSegment | None = None
        self.rows_skipped = 0           # replayed rows found already committed (or staged)
        self._open = self._restore(state)

    # ---- restore ------------------------------------------------------------------------------
    def _restore(self, state: dict | None) -> _OpenFile | None:
        committed = self.index.high(self.writer)
        open_file = _OpenFile.from_state(state["open"]) if state and state.get("open") else None
        if open_file is not None and open_file.last <= committed:
            log.info("%s: the restored open file (%d..%d) was committed before the restart",
                     self.writer, open_file.first, open_file.last)
            open_file = None
        elif open_file is not None and open_file.first <= committed:
            raise RuntimeError(f"{self.writer}: committed files end at {committed}, inside the restored "
                               f"open file {open_file.first}..{open_file.last}: the output directory was "
                               "written by another job or copied")
        self._high = max(committed, open_file.last if open_file else -1)
        self._remove_orphans(keep={s[0] for s in open_file.segments} if open_file else set())
        self.fs.create_dir(self._staging, recursive=True)
        return open_file

    def _remove_orphans(self, keep: set[str]) -> None:
        selector = pafs.FileSelector(self._staging, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.path not in keep:
                self.fs.delete_file(info.path)

    # ---- writing ------------------------------------------------------------------------------
    @property
    def high(self) -> int:
        """Rows with sequence numbers up to this one are committed or staged."""
        return self._high

    @property
    def has_open_file(self) -> bool:
        return self._open is not None

    @property
    def open_since(self) -> float | None:
        return self._open.opened_at if self._open else None

    def write(self, batch: pa.RecordBatch, sequence: np.ndarray, now: float | None = None) -> list[Commit]:
        """Stage ``batch`` (row i has sequence number ``sequence[i]``; every row of a write is above
        every row of the writer's earlier writes, in any order within the batch); durable when
        this returns. Rows at or below :attr:`high` are skipped (replays). Returns the commits
        this write triggered."""
        now = time.time() if now is None else now
        commits = self.roll_if_due(now)
        if batch.num_rows == 0:
            return commits
        sequence = np.asarray(sequence, dtype=np.int64)
        if len(sequence) != batch.num_rows:
            raise ValueError(f"{batch.num_rows} rows but {len(sequence)} sequence numbers")
        fresh = sequence > self._high
        if not fresh.all():
            self.rows_skipped += int((~fresh).sum())
            if not fresh.any():
                return commits
            batch, sequence = batch.filter(pa.array(fresh)), sequence[fresh]
        if self._segment is not None and self._segment.schema != batch.schema:
            commits += self._commit_list()          # a file holds one schema
        if self._open is None:
            self._open = _OpenFile(self.target.bucket(now), now, int(sequence.min()), int(sequence.min()))
        if self._segment is None or not self._segment.is_open:
            self._segment = StagingSegment(self.fs, self._staging, batch.schema)
            self._open.segments.append([self._segment.path, 0])
        self._open.nbytes += self._segment.write(batch)
        self._open.segments[-1][1] = self._segment.length
        self._open.rows += batch.num_rows
        self._open.last = self._high = int(sequence.max())
        if self._open.nbytes >= self.target.roll_bytes:
            commits += self._commit_list()
        return commits

    def roll_if_due(self, now: float | None = None) -> list[Commit]:
        """Commit the open file if it is old enough or its partition has passed."""
        now = time.time() if now is None else now
        f = self._open
        if f is not None and (now - f.opened_at >= self.target.roll_interval_s or
                              self.target.bucket(now) != f.bucket):
            return self._commit_list()
        return []

    def _commit_list(self) -> list[Commit]:
        commit = self.commit()
        return [commit] if commit else []

    def commit(self) -> Commit | None:
        """Make the open file visible (atomically) and forget its staging segments."""
        f = self._open
        if f is None:
            return None
        started = time.perf_counter()
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        batches = [b for path, length in f.segments for b in read_segment(self.fs, path, length)]
        directory = f"{self.root}/{f.bucket}"
        final = f"{directory}/{self.target.part_name(self.writer, f.first, f.last)}"
        temporary = f"{self._staging}/commit-{uuid.uuid4().hex}.tmp"
        size = write_file(self.fs, temporary, batches, self.target.format)
        self.fs.create_dir(directory, recursive=True)
        self.fs.move(temporary, final)                        # the commit point
        self.index.record(self.writer, f.last)
        self._open = None
        for path, _ in f.segments:
            self.fs.delete_file(path)
        return Commit(final, f.rows, size, f.first, f.last, time.perf_counter() - started)

    # ---- engine state -------------------------------------------------------------------------
    def state(self) -> dict:
        """What a checkpoint must hold (small: segment names and lengths, not rows)."""
        return {"writer": self.writer, "open": self._open.to_state() if self._open else None}

    def close(self, commit: bool = True) -> Commit | None:
        """Stop writing; by default commit the open file (safe at any time, see module doc)."""
        if commit:
            return self.commit()
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        return None

"""The exactly-once file writer (connectors/files) through pyarrow.fs, on the local filesystem and
on HDFS (an embedded MiniDFSCluster, reached through WebHDFS: the ``hdfs`` fixture). Crashes are
injected at every filesystem operation of a run, the engine's replay from the last checkpoint is
simulated, and the committed files must hold every row exactly once with nothing partial visible.
(The Flink job's own kill -9 test is in test_file_sink_job.py.)"""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from connectors.dead_letter import DeadLetter
from connectors.files import CommittedIndex, FileTarget, RollingFileWriter, dead_letter_rows, parse_part_name
from connectors.files.formats import read_jsonl
from connectors.files.staging import StagingSegment
from file_sink_helpers import committed_column, staged_paths, visible_paths

T0 = 1714567800.0          # 2024-05-01 12:50:00 UTC


def batch_of(offsets: range | list[int]) -> tuple[pa.RecordBatch, np.ndarray]:
    offs = np.asarray(list(offsets), dtype=np.int64)
    ids = [f"events/0/{o}" for o in offs]
    return pa.record_batch([pa.array(ids), pa.array(offs * 0.5)], names=["prediction_id", "score"]), offs


def committed_ids(root: Path) -> list[str]:
    table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table()
    return table.column("prediction_id").to_pylist()


def visible_files(root: Path) -> list[Path]:
    """What a reader lists: files under root not hidden by a '_' or '.' path component."""
    return [p for p in root.rglob("*") if p.is_file()
            and not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)]


def test_commits_are_partitioned_rolled_and_readable(tmp_path):
    target = FileTarget(tmp_path.as_uri(), roll_bytes=10_000, roll_interval_s=60)
    w = RollingFileWriter(target, "events-0")
    now = T0
    for start in range(0, 2000, 100):                  # ~1.6 kB per batch: rolls by size
        w.write(*batch_of(range(start, start + 100)), now=now)
        now += 1
    w.write(*batch_of(range(2000, 2010)), now=T0 + 700)    # 13:01: a new hour → the 12 file rolls
    w.close()
    files = visible_files(tmp_path)
    assert len(files) >= 3
    hours = {f.parent.name for f in files}
    assert hours == {"hour=12", "hour=13"}
    assert all(f.parent.parent.name == "date=2024-05-01" for f in files)
    ids = committed_ids(tmp_path)
    assert sorted(ids) == sorted(f"events/0/{o}" for o in range(2010))
    # every file names the offsets it holds
    table = ds.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table()
    assert set(table.column("hour").to_pylist()) == {12, 13}
    for f in files:
        part = parse_part_name(f.name)
        offs = [int(i.rsplit("/", 1)[1]) for i in ds.dataset(str(f)).to_table().column("prediction_id").to_pylist()]
        assert (part.writer, part.first, part.last) == ("events-0", min(offs), max(offs))
    assert not list((tmp_path / "_staging" / "events-0").iterdir()), "staging left behind after close"


def test_rolls_by_age(tmp_path):
    target = FileTarget(tmp_path.as_uri(), roll_interval_s=30)
    w = RollingFileWriter(target, "events-1")
    w.write(*batch_of(range(0, 10)), now=T0)
    assert w.roll_if_due(T0 + 29) == []
    commits = w.roll_if_due(T0 + 30)
    assert [c.rows for c in commits] == [10] and not w.has_open_file
    assert len(visible_files(tmp_path)) == 1


def test_jsonl_and_dead_letters(tmp_path):
    target = FileTarget(tmp_path.as_uri(), format="jsonl")
    letters = [DeadLetter(b"\xff\x00not json", "invalid_utf8", "bad byte", "events", 3, 40 + i) for i in range(3)]
    rows, offsets = dead_letter_rows(letters)
    w = RollingFileWriter(target, "events-3")
    w.write(rows, offsets, now=T0)
    (commit,) = [w.commit()]
    assert commit.path.endswith("part-events-3-00000000000000000040-00000000000000000042.jsonl")
    table = read_jsonl(pafs.LocalFileSystem(), commit.path)
    assert table.column("source").to_pylist() == ["events/3/40", "events/3/41", "events/3/42"]
    assert table.column("reason").to_pylist() == ["invalid_utf8"] * 3
    import base64
    assert base64.b64decode(table.column("value")[0].as_py()) == b"\xff\x00not json"


def test_rows_out_of_order_within_a_write(tmp_path):
    """Dead letters of one micro-batch come in the order the steps split them off, not by offset."""
    w = RollingFileWriter(FileTarget(tmp_path.as_uri()), "events-0")
    w.write(*batch_of([7, 3, 9]), now=T0)
    w.write(*batch_of([12, 10]), now=T0)
    (commit,) = [w.commit()]
    assert (commit.first, commit.last, commit.rows) == (3, 12, 5)
    letters = [DeadLetter(b"x", "invalid_json", "", "events", 0, o) for o in (5, 2, 4)]
    rows, offsets = dead_letter_rows(letters)
    assert offsets.tolist() == [2, 4, 5] and rows.column("offset").to_pylist() == [2, 4, 5]


def test_schema_change_starts_a_new_file(tmp_path):
    w = RollingFileWriter(FileTarget(tmp_path.as_uri()), "events-0")
    w.write(*batch_of(range(0, 5)), now=T0)
    other = pa.record_batch([pa.array(["events/0/5"]), pa.array([1], pa.int64())], names=["prediction_id", "label"])
    commits = w.write(other, np.array([5]), now=T0)
    assert [c.rows for c in commits] == [5]
    w.close()
    assert len(visible_files(tmp_path)) == 2


def test_restored_open_file_already_committed_is_dropped(place):
    target = FileTarget(place)
    w = RollingFileWriter(target, "events-0")
    w.write(*batch_of(range(0, 10)), now=T0)
    checkpoint = w.state()
    w.write(*batch_of(range(10, 20)), now=T0)
    w.commit()                                   # committed after the checkpoint, then a crash
    restored = RollingFileWriter(target, "events-0", checkpoint)
    assert not restored.has_open_file and restored.high == 19
    assert restored.write(*batch_of(range(0, 25)), now=T0 + 1) == []   # the replay: 20..24 are new
    assert restored.rows_skipped == 20
    restored.close()
    assert sorted(committed_column(place, "prediction_id")) == sorted(f"events/0/{o}" for o in range(25))


class Crash(Exception):
    pass


class CrashingFS:
    """A pyarrow filesystem that dies before its n-th mutating call (like a kill -9 there)."""

    MUTATING = {"open_output_stream", "move", "delete_file", "create_dir"}

    def __init__(self, fs: pafs.FileSystem, crash_at: int | None, type_name: str | None = None) -> None:
        self._fs = fs
        self.crash_at = crash_at
        self.calls = 0
        self.kinds: set[str] = set()
        self.type_name = type_name or fs.type_name

    def __getattr__(self, name):
        attr = getattr(self._fs, name)
        if name not in self.MUTATING:
            return attr

        def call(*args, **kwargs):
            self.calls += 1
            self.kinds.add(name)
            if self.crash_at is not None and self.calls == self.crash_at:
                raise Crash(f"{name}{args}")
            return attr(*args, **kwargs)
        return call


def run_engine(target: FileTarget, batches: list, crash_at: int | None, checkpoint_every: int,
               rng: random.Random, type_name: str | None = None) -> tuple[int, bool, set[str]]:
    """Feed ``batches`` through a writer like a stream engine would: checkpoint every few batches
    (state + input position), crash at one filesystem call, restore from the last checkpoint and
    replay. Returns (filesystem calls made, whether it crashed, the kinds of calls made)."""
    index = CommittedIndex(target)
    fs = index.fs = CrashingFS(index.fs, crash_at, type_name)
    writer = None
    checkpoint: tuple[int, dict | None] = (0, None)
    position, now, crashed = 0, T0, False
    while True:
        try:
            writer = writer or RollingFileWriter(target, "events-0", None, index)
            while position < len(batches):
                writer.write(*batches[position], now=now)
                position += 1
                now += rng.choice([1, 1, 1, 45, 400])
                if position % checkpoint_every == 0:
                    checkpoint = (position, writer.state())
            writer.close()
            return fs.calls, crashed, fs.kinds
        except Crash:
            assert not crashed
            crashed = True
            fs.crash_at = None
            if writer is not None:
                _tear_tail(writer)
            index = CommittedIndex(target)       # a new process: everything from the filesystem
            index.fs = fs
            position, state = checkpoint
            writer = RollingFileWriter(target, "events-0", state, index)


def _tear_tail(writer: RollingFileWriter) -> None:
    """A crash can leave a half-written message after the durable length: append garbage."""
    seg = writer._segment
    if seg is not None and seg.is_open:
        seg._stream.write(b"\x01torn-record-batch")
        seg._stream.flush()


@pytest.mark.parametrize("place, type_name", [
    pytest.param("local", None, id="local-own-segments"),
    pytest.param("local", "s3", id="local-object-per-write"),
    pytest.param("hdfs", None, id="hdfs", marks=[pytest.mark.slow, pytest.mark.hdfs]),
], indirect=["place"])
def test_crash_at_every_filesystem_call_commits_each_row_once(place, type_name):
    """Local files keep a staging segment open across writes (``own-segments``); HDFS over WebHDFS
    makes bytes durable only when a file is closed, so there every write is its own segment either
    way (``object-per-write`` forces that on local files, as on S3). On HDFS every call is a few
    HTTP requests (~50-100 ms each on this shared machine), so its run is shorter: 12 micro-batches
    (~40 filesystem calls, a crash at each) instead of 40 (~130)."""
    local = place.startswith("file:")
    rng = random.Random(7)
    batches, start = [], 0
    for _ in range(40 if local else 12):
        n = rng.randint(1, 60)
        batches.append(batch_of(range(start, start + n)))
        start += n + rng.choice([0, 0, 1, 3])         # offsets with gaps (dead letters, compaction)
    expected = sorted(f"events/0/{o}" for b in batches for o in b[1])
    roll = dict(roll_bytes=3000 if local else 1500, roll_interval_s=60)
    total, _, kinds = run_engine(FileTarget(f"{place}/dry", **roll), batches, None, 3, random.Random(1), type_name)
    assert total > (50 if local else 30)
    assert kinds == CrashingFS.MUTATING, f"the run should reach every kind of mutating call, made {kinds}"

    def crash_and_check(crash_at: int) -> None:
        root = f"{place}/crash-{crash_at}"
        _, crashed, _ = run_engine(FileTarget(root, **roll), batches, crash_at, 3, random.Random(1), type_name)
        assert crashed
        ids = committed_column(root, "prediction_id")
        assert len(ids) == len(set(ids)), f"crash at call {crash_at}: duplicated rows"
        assert sorted(ids) == expected, f"crash at call {crash_at}: rows missing"
        for path in visible_paths(root):
            assert parse_part_name(path.rsplit("/", 1)[1]), f"crash at call {crash_at}: stray visible file {path}"
        assert not staged_paths(root, "events-0"), f"crash at call {crash_at}: staging left behind"

    # every crash point writes under a root of its own: on HDFS, where each run waits on HTTP, they
    # run side by side (a few minutes one after another); local runs are CPU-bound and stay serial
    with ThreadPoolExecutor(max_workers=1 if local else 6) as pool:
        for done in pool.map(crash_and_check, range(1, total + 1)):
            assert done is None


def test_segment_prefix_survives_a_torn_tail(tmp_path):
    fs = pafs.LocalFileSystem()
    seg = StagingSegment(fs, str(tmp_path), batch_of([0])[0].schema)
    seg.write(batch_of([0, 1])[0])
    durable = seg.length
    seg._stream.write(b"\x07garbage")
    seg._stream.flush()
    from connectors.files.staging import read_segment
    assert [b.num_rows for b in read_segment(fs, seg.path, durable)] == [2]


def test_job_targets_keep_uri_options():
    from operators.flink.file_sink import file_targets
    targets = file_targets("s3://bucket/out/?region=eu-west-1", "jsonl", "day=%d", 1 << 20, 60, True)
    assert {k: t.uri for k, t in targets.items()} == {
        "predictions": "s3://bucket/out/predictions?region=eu-west-1",
        "dead_letters": "s3://bucket/out/dead_letters?region=eu-west-1"}
    assert list(file_targets("file:///x", "parquet", "h=%H", 1, 1, False)) == ["predictions"]


def test_a_batchs_shadow_rows_are_one_write_and_a_replay_adds_none(tmp_path):
    """The job's ``shadow/`` dataset: two shadows' predictions of one batch share the inputs'
    offsets (the writer's sequence numbers), so they are written in one write; replayed after a
    restore from a checkpoint taken after it, none is written twice."""
    from operators.flink.file_sink import SHADOW, file_targets
    from operators.steps import ExperimentOutput

    targets = file_targets((tmp_path / "out").as_uri(), "parquet", "h=%H", 1 << 20, 60, True, include_shadow=True)
    assert list(targets) == ["predictions", "dead_letters", "shadow"]
    assert targets[SHADOW].uri.endswith("/out/shadow")

    def shadow(name: str, offsets) -> pa.RecordBatch:
        offs = list(offsets)
        return pa.record_batch([pa.array([f"events/0/{o}/{name}@2" for o in offs]), pa.array([0.5] * len(offs)),
                                pa.array(["shadow"] * len(offs)), pa.array(["2"] * len(offs))],
                               names=["prediction_id", "score", "role", "model_version"])
    assert ExperimentOutput().shadow_rows()[0] is None
    rows, offsets = ExperimentOutput([shadow("a", range(5)), shadow("b", [0, 2, 4])]).shadow_rows()
    assert offsets.tolist() == [0, 1, 2, 3, 4, 0, 2, 4]
    writer = RollingFileWriter(targets[SHADOW], "events-0")
    writer.write(rows, offsets, T0)
    checkpoint = writer.state()
    writer.close(commit=False)                                   # a crash after the checkpoint
    restored = RollingFileWriter(targets[SHADOW], "events-0", checkpoint)
    restored.write(rows, offsets, T0 + 1)                        # the replay
    assert restored.rows_skipped == 8
    restored.close()
    want = [f"events/0/{o}/a@2" for o in range(5)] + [f"events/0/{o}/b@2" for o in (0, 2, 4)]
    assert sorted(committed_ids(tmp_path / "out" / "shadow")) == sorted(want)

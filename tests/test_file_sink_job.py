"""The Flink job writing Parquet files (sink.kind both) is killed with SIGKILL while it writes, then
restored from its last checkpoint: the committed files hold every prediction and dead letter
exactly once, and readers (pyarrow.dataset) never see a partial or staging file.

On the local filesystem and on HDFS (the session's embedded MiniDFSCluster, written through
WebHDFS: ``place`` fixture); the sink goes through pyarrow.fs either way. On HDFS Flink's own
checkpoints go there too (``webhdfs://``, through Hadoop's client jars on HADOOP_CLASSPATH), and
the restart restores from them."""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest

from connectors.files import parse_part_name
from jobs import demo_data
from jobs.checkpoints import checkpoint_number, latest_checkpoint
from jobs.producer import produce
from connectors.embedded.maven import classpath
from file_sink_helpers import committed_column, read_column, staged_paths, visible_paths

pytestmark = pytest.mark.slow

N_EVENTS = 6_000
STALL_S = 300


def staged_segments(out: str) -> list[str]:
    return [p for name in ("predictions", "dead_letters") for p in staged_paths(f"{out}/{name}")
            if p.endswith(".arrows")]


def test_kill_mid_write_and_restore_commits_each_prediction_once(stack, place):
    out = f"{place}/out"
    on_hdfs = place.startswith("webhdfs:")
    checkpoints = {"flink__checkpoint_dir": f"{place}/checkpoints"} if on_hdfs else {}
    env = {"HADOOP_CLASSPATH": classpath("hadoop-client")} if on_hdfs else None
    # topics of its own: the local and the HDFS run may share a worker's broker, and a job reading
    # the other run's topic from the earliest offset would count its records too
    cfg = stack.job_config(f"files-{uuid.uuid4().hex[:6]}", partitions=2, flink__checkpoint_interval_ms=1000, sink__kind="both",
                           sink__path=out, sink__roll_size_mb=0.05, sink__roll_interval_s=3.0, **checkpoints)
    job, reader = stack.start_job(cfg, env=env)
    restarted = None
    try:
        records, reasons = demo_data.with_bad_events(demo_data.events(N_EVENTS, stack.entities, seed=41), stack.entities)
        coords: list[str] = []
        producer = threading.Thread(target=lambda: coords.extend(produce(
            cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records, rate=3000, encode=demo_data.encode)))
        producer.start()
        # mid-stream: files committed, a checkpoint completed since, rows staged but not committed
        deadline = time.monotonic() + 300
        while not (len(committed_column(f"{out}/predictions", "prediction_id")) > 1500 and staged_segments(out)):
            job.check_alive()
            assert time.monotonic() < deadline, "the job never committed files"
            time.sleep(0.1)
        at_that_time = checkpoint_number(latest_checkpoint(cfg.flink.checkpoint_dir))
        while checkpoint_number(latest_checkpoint(cfg.flink.checkpoint_dir)) < at_that_time + 1:
            job.check_alive()
            assert time.monotonic() < deadline, "no checkpoint completed"
            time.sleep(0.05)
        while not staged_segments(out):
            time.sleep(0.01)
        job.kill()
        staged_at_kill = len(staged_segments(out))
        committed_at_kill = len(committed_column(f"{out}/predictions", "prediction_id"))
        restored_from = latest_checkpoint(cfg.flink.checkpoint_dir)
        assert restored_from, "no complete checkpoint to restore from"
        assert restored_from.startswith(place) == on_hdfs, f"restoring from {restored_from}"
        restarted = stack.job(cfg, "--restore", "latest", env=env).start()
        producer.join(timeout=120)
        assert len(coords) == N_EVENTS
        assert committed_at_kill < N_EVENTS, "the kill came after everything was committed: not mid-write"

        # wait until the files account for every input (the last files commit on roll_interval_s);
        # give up once nothing new was committed for STALL_S (the restored job's start-up included)
        expected = set(coords)
        last_count, last_progress = -1, time.monotonic()
        while True:
            predictions = committed_column(f"{out}/predictions", "prediction_id")
            dead = committed_column(f"{out}/dead_letters", "source")
            if expected <= set(predictions) | set(dead):
                break
            if len(predictions) + len(dead) > last_count:
                last_count, last_progress = len(predictions) + len(dead), time.monotonic()
            if time.monotonic() - last_progress > STALL_S:
                break
            restarted.check_alive()
            time.sleep(0.5)
        missing = expected - set(predictions) - set(dead)
        assert not missing, (f"{len(missing)} inputs missing from the committed files after {STALL_S}s without a "
                             f"new commit, e.g. {sorted(missing)[:5]}; the restored job's log:\n{restarted.log_tail()}")
        repeated = [k for k, n in Counter(predictions + dead).items() if n > 1]
        assert not repeated, f"{len(repeated)} inputs committed more than once, e.g. {repeated[:5]}"
        assert not set(predictions) & set(dead)
        # dead letters carry their reasons into the files
        dead_reasons = dict(zip(dead, committed_column(f"{out}/dead_letters", "reason")))
        # lineage columns in the files: the served model and feature snapshot, the champion role
        assert set(committed_column(f"{out}/predictions", "role")) == {"champion"}
        assert len(set(committed_column(f"{out}/predictions", "features"))) == 1
        assert set(committed_column(f"{out}/predictions", "model_version")) == {demo_data.DEMO_MODEL_VERSION}
        assert {coords[i]: r for i, r in reasons.items()} == {k: v for k, v in dead_reasons.items() if k in expected}
        # what the Kafka sink wrote (at-least-once) agrees with the files
        tally = reader.wait_for(expected, timeout_s=60)
        assert set(tally.predictions) & expected == set(predictions) & expected
        # readers see committed Parquet files only, each named after the offsets it holds
        visible = visible_paths(out)
        for f in visible:
            part = parse_part_name(f.rsplit("/", 1)[1])
            assert part is not None, f"stray visible file {f}"
            column = "source" if "/dead_letters/" in f else "prediction_id"
            offsets = [int(i.rsplit("/", 1)[1]) for i in read_column(out, f, column)]
            assert (part.first, part.last) == (min(offsets), max(offsets))
        print(f"\nkilled with {committed_at_kill} predictions committed and {staged_at_kill} staging segments "
              f"open; {len(visible)} files committed; restored from {restored_from}; "
              f"Kafka duplicates {tally.duplicate_predictions}")
    finally:
        reader.stop()
        job.kill()
        if restarted:
            restarted.stop()

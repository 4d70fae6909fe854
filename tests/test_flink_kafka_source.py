"""``kafka.source: flink``: Flink's own KafkaSource (+ streamscore's RecordBatcher) instead of the
Python partition poller, on the session's broker (Apache Kafka by default).

One job run proves the three promises of the alternative source: the input coordinates reach the
prediction ids and the dead letters (``topic/partition/offset``), partitions added while the job
runs are found and read, and offsets live in Flink's checkpoints (kill -9, restore from the latest
checkpoint: nothing lost)."""
from __future__ import annotations

import time
from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient, NewPartitions

from jobs import demo_data
from jobs.checkpoints import checkpoint_number, latest_checkpoint
from jobs.producer import produce

pytestmark = pytest.mark.slow

def _records(n: int, entities: int, seed: int) -> list:
    """``n`` valid events with a malformed record every 100th (dead-lettered ``invalid_json``)."""
    records: list = list(demo_data.events(n, entities, seed=seed))
    for i in range(0, len(records), 100):
        records[i] = b"{not json " + str(i).encode()
    return records


def _wait(condition, what: str, job, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        job.check_alive()
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.2)


def test_flink_source_reads_new_partitions_and_resumes_from_its_checkpoint(stack):
    cfg = stack.job_config("flink-source", partitions=2, kafka__source="flink",
                           kafka__partition_discovery_interval_ms=1000, flink__checkpoint_interval_ms=1000)
    k = cfg.kafka
    job, reader = stack.start_job(cfg)
    restarted = None
    try:
        # 1. the coordinates reach prediction ids and dead letters
        first = _records(4000, stack.entities, seed=41)
        coords = produce(k.bootstrap_servers, k.input_topic, first, encode=demo_data.encode)
        tally = reader.wait_for(set(coords), timeout_s=600, stall_s=180, check=job.check_alive)
        assert not tally.missing(set(coords))
        for coord, record in zip(coords, first):
            if isinstance(record, bytes):
                assert tally.dead_letters.get(coord) == "invalid_json", coord
            else:
                assert tally.predictions[coord]["event_id"] == record["id"], coord
                assert tally.predictions[coord]["prediction_id"] == coord

        # 2. two partitions added while the job runs are found and read from their beginning
        admin = AdminClient({"bootstrap.servers": k.bootstrap_servers})     # kept until the answer came
        admin.create_partitions([NewPartitions(k.input_topic, 4)])[k.input_topic].result(timeout=60)
        second: list[str] = []
        deadline = time.monotonic() + 120
        while not {"2", "3"} <= {c.split("/")[1] for c in second}:     # the sticky partitioner picks them
            assert time.monotonic() < deadline, f"no record reached partitions 2 and 3: {Counter(c.split('/')[1] for c in second)}"
            second += produce(k.bootstrap_servers, k.input_topic, _records(2000, stack.entities, seed=len(second)),
                              encode=demo_data.encode)
        tally = reader.wait_for(set(second), timeout_s=600, stall_s=180, check=job.check_alive)
        assert not tally.missing(set(second)), "records of the added partitions were not read"

        # 3. kill -9 once a checkpoint covers all of that; restore; nothing lost, nothing re-read
        #    that the checkpoint covered
        covered = set(coords) | set(second)
        seen = checkpoint_number(latest_checkpoint(cfg.flink.checkpoint_dir))
        _wait(lambda: checkpoint_number(latest_checkpoint(cfg.flink.checkpoint_dir)) >= seen + 2,
              "two more completed checkpoints", job)
        job.kill()
        third = produce(k.bootstrap_servers, k.input_topic, _records(3000, stack.entities, seed=43),
                        encode=demo_data.encode)
        restarted = stack.job(cfg, "--restore", "latest").start()
        tally = reader.wait_for(set(third), timeout_s=600, stall_s=180, check=restarted.check_alive)
        assert not tally.missing(set(third)), "records produced while the job was down were lost"
        assert not covered & tally.duplicate_ids, "records covered by the checkpoint were read again"
        assert {c.split("/")[1] for c in third} <= {"0", "1", "2", "3"}
    finally:
        reader.stop()
        job.kill()
        if restarted:
            restarted.stop()

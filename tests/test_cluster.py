"""The scoring job on a real standalone Flink cluster — JobManager and TaskManager processes started
with the distribution inside the apache-flink wheel (tests/flink_cluster.py), configured from
flink-conf/config.yaml with free loopback ports — submitted with `flink run` through
flink-conf/submit-job.sh (the command docker-compose runs), stopped with a savepoint and resumed
from it. Its metrics are read from the REST API and the Prometheus reporter."""
from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections import Counter

import pytest

from flink_cluster import StandaloneCluster
from jobs import demo_data
from jobs.producer import produce
from jobs.tally import OutputReader
from job_helpers import read_committed

pytestmark = pytest.mark.slow

N_FIRST, N_SECOND = 3_000, 2_000


@pytest.fixture
def cluster(tmp_path):
    c = StandaloneCluster(tmp_path / "flink")
    try:
        yield c.start()
    finally:
        c.stop()


def metric(metrics: dict[str, str], suffix: str) -> list[str]:
    return [v for k, v in metrics.items() if k.endswith("." + suffix)]


def wait_for_metrics(cluster: StandaloneCluster, job_id: str, expect: dict[str, int], timeout_s: float = 60):
    """Poll the REST API until every counter in ``expect`` (by name suffix) shows its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = cluster.job_metrics(job_id)
        seen = {name: sorted(int(v) for v in metric(metrics, name)) for name in expect}
        if all(want in seen[name] for name, want in expect.items()) or time.monotonic() > deadline:
            return metrics, seen
        time.sleep(1)


def test_submit_stop_with_savepoint_resume_on_a_standalone_cluster(cluster, stack, tmp_path):
    out = tmp_path / "files"
    cfg = stack.job_config("cluster", partitions=2, flink__checkpoint_interval_ms=1000, sink__kind="both",
                           sink__path=out.as_uri(), sink__roll_interval_s=2.0)
    job_yaml = cfg.to_yaml(tmp_path / "job.yaml")
    reader = OutputReader(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, cfg.kafka.dead_letter_topic).start()
    job_id = cluster.submit(job_yaml)
    try:
        assert cluster.rest(f"/jobs/{job_id}")["state"] in ("CREATED", "INITIALIZING", "RUNNING")
        records, reasons = demo_data.with_bad_events(demo_data.events(N_FIRST, stack.entities, seed=51, prefix="first"),
                                           stack.entities, every=61, start=30)
        first = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records, encode=demo_data.encode)
        tally = reader.wait_for(set(first), timeout_s=300, stall_s=240)
        assert not tally.missing(set(first)), f"predictions did not arrive:\n{cluster.log_tail()}"
        expected_reasons = Counter(reasons.values())
        assert tally.reasons() == expected_reasons

        # metrics: REST API (what the Web UI shows; the UI is served too) ...
        with urllib.request.urlopen(f"http://127.0.0.1:{cluster.rest_port}/", timeout=10) as page:
            assert b"<html" in page.read().lower()
        good = N_FIRST - len(reasons)
        expect = {"records_in": N_FIRST, "predictions_out": good, "dead_letters_out": len(reasons)}
        expect.update({f"dead_letters.{r}": n for r, n in expected_reasons.items()})
        metrics, seen = wait_for_metrics(cluster, job_id, expect)
        for name, want in expect.items():
            assert want in seen[name], f"{name}: REST shows {seen[name]}, expected {want}"
        for latency in ("scoring_ms", "feature_lookup_ms", "poll_to_ack_ms"):
            (dist,) = metric(metrics, latency)
            count = int(re.search(r"count=(\d+)", dist).group(1))
            assert count > 0, f"{latency}: {dist}"
            assert int(metric(metrics, f"{latency}_p99")[0]) >= int(re.search(r"min=(\d+)", dist).group(1))
        # ... and the Prometheus reporter configured in flink-conf/config.yaml
        scraped = cluster.prometheus()
        for name in ("records_in", "predictions_out", "scoring_ms_p99", "feature_lookup_ms_p50"):
            assert re.search(rf"^flink_taskmanager_job_task_operator_{name}\{{.*job_id=\"{job_id}\"", scraped, re.M), \
                f"{name} not exported to Prometheus"

        # stop with a savepoint (the file sink commits its open files), resume from it
        stopped = cluster.flink("stop", "--savepointPath", (tmp_path / "savepoints").as_uri(), job_id)
        savepoint = re.search(r"Savepoint completed\. Path: (\S+)", stopped).group(1)
        assert cluster.rest(f"/jobs/{job_id}")["state"] == "FINISHED"
        job_id = cluster.submit(job_yaml, "--fromSavepoint", savepoint)
        second = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
                         demo_data.events(N_SECOND, stack.entities, seed=52, prefix="second"), encode=demo_data.encode)
        everything = set(first) | set(second)
        tally = reader.wait_for(everything, timeout_s=300, stall_s=240)
        assert not tally.missing(everything), f"inputs lost across the savepoint:\n{cluster.log_tail()}"
        # the savepoint held the offsets of everything scored before it: nothing was scored twice
        assert tally.duplicate_predictions == 0 and tally.duplicate_dead_letters == 0

        # the committed files agree: every prediction once (the last files commit after 2 s)
        deadline = time.monotonic() + 60
        while True:
            ids = read_committed(out / "predictions", "prediction_id")
            if set(tally.predictions) <= set(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sorted(ids) == sorted(tally.predictions)
        assert sorted(read_committed(out / "dead_letters", "source")) == sorted(tally.dead_letters)
        cluster.cancel(job_id)
    finally:
        reader.stop()


def test_exactly_once_sink_jars_reach_a_standalone_cluster(cluster, kafka_stack, tmp_path):
    """``kafka.delivery: exactly_once`` submitted with ``flink run``: the job adds the Kafka
    connector and the record-serializer jar to ``pipeline.jars``, the client ships them with the
    job, and the TaskManager writes committed predictions and dead letters (with headers)."""
    cfg = kafka_stack.job_config(f"cluster-eos-{uuid.uuid4().hex[:6]}", partitions=2,
                                 flink__checkpoint_interval_ms=1000, kafka__delivery="exactly_once")
    cfg.kafka.consumer["isolation.level"] = "read_committed"
    job_yaml = cfg.to_yaml(tmp_path / "job.yaml")
    reader = OutputReader(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, cfg.kafka.dead_letter_topic,
                          cfg.kafka.consumer).start()
    job_id = cluster.submit(job_yaml)
    try:
        records, reasons = demo_data.with_bad_events(demo_data.events(N_FIRST, kafka_stack.entities, seed=53,
                                                                      prefix="eos"),
                                                     kafka_stack.entities, every=61, start=30)
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records, encode=demo_data.encode)
        tally = reader.wait_for(set(coords), timeout_s=300, stall_s=240)
        assert not tally.missing(set(coords)), f"committed outputs did not arrive:\n{cluster.log_tail()}"
        assert tally.reasons() == Counter(reasons.values()), "dead letters keep their reason header"
        assert tally.duplicate_predictions == 0 and tally.duplicate_dead_letters == 0
        vertices = " ".join(v["name"] for v in cluster.rest(f"/jobs/{job_id}")["vertices"])
        assert "kafka-transactional-sink" in vertices, vertices
        cluster.cancel(job_id)
    finally:
        reader.stop()

"""The scoring job on a real standalone Flink cluster — JobManager and TaskManager processes started
with the distribution inside the apache-flink wheel (pyflink/bin/start-cluster.sh), configured from
flink-conf/config.yaml with free loopback ports — submitted with `flink run` through
flink-conf/submit-job.sh (the command docker-compose runs), stopped with a savepoint and resumed
from it. Its metrics are read from the REST API and the Prometheus reporter."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pyflink
import pytest
import yaml

from connectors.embedded.ports import PortError, free_port, listening_ports, wait_listening
from jobs import demo_data
from jobs.flink_rest import FlinkRest
from jobs.producer import produce
from jobs.tally import OutputReader
from job_helpers import read_committed

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FLINK_HOME = Path(pyflink.__file__).resolve().parent
SUBMIT = REPO / "flink-conf" / "submit-job.sh"     # the command docker-compose.yml runs too
N_FIRST, N_SECOND = 3_000, 2_000


def set_key(config: dict, dotted: str, value) -> None:
    """Set ``a.b.c`` in a nested Flink 2.x config.yaml mapping."""
    *parents, last = dotted.split(".")
    for p in parents:
        config = config.setdefault(p, {})
    config[last] = value


class StandaloneCluster:
    """A JobManager + TaskManager from the wheel's Flink distribution, on loopback, with its own
    config/log/pid directories (nothing shared with other runs)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.conf_dir, self.log_dir = workdir / "conf", workdir / "log"
        self.rest_port = free_port()
        self.prom_ports = range(0)      # set by write_config

    def write_config(self) -> None:
        config = yaml.safe_load((REPO / "flink-conf" / "config.yaml").read_text())
        prom = free_port()
        self.prom_ports = range(prom, prom + 4)
        overrides = {
            "jobmanager.bind-host": "127.0.0.1", "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": free_port(), "jobmanager.memory.process.size": "900m",
            "taskmanager.bind-host": "127.0.0.1", "taskmanager.host": "127.0.0.1",
            "taskmanager.memory.process.size": "1600m",
            "rest.address": "127.0.0.1", "rest.bind-address": "127.0.0.1", "rest.port": self.rest_port,
            "blob.server.port": free_port(),
            "metrics.reporter.prom.port": f"{prom}-{prom + 3}",
            "metrics.fetcher.update-interval": 1000,       # REST metrics refresh (default 10 s)
            "python.executable": sys.executable,          # the TaskManager's Python workers
            "python.client.executable": sys.executable,
            "execution.checkpointing.dir": (self.workdir / "checkpoints").as_uri(),
            "execution.checkpointing.savepoint-dir": (self.workdir / "savepoints").as_uri(),
            "env.pid.dir": str(self.workdir / "pid"),
            "env.log.dir": str(self.log_dir),
        }
        for key, value in overrides.items():
            set_key(config, key, value)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(config))
        (self.conf_dir / "masters").write_text(f"127.0.0.1:{self.rest_port}\n")
        (self.conf_dir / "workers").write_text("127.0.0.1\n")
        for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties"):
            (self.conf_dir / name).write_text((FLINK_HOME / "conf" / name).read_text())

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "FLINK_HOME": str(FLINK_HOME), "FLINK_CONF_DIR": str(self.conf_dir),
                "FLINK_LOG_DIR": str(self.log_dir)}

    def daemon_pids(self) -> list[int]:
        """PIDs of the JobManager and TaskManager daemons (from this cluster's pid files)."""
        return [int(p) for f in sorted((self.workdir / "pid").glob("*.pid")) for p in f.read_text().split()]

    def start(self, timeout_s: float = 120, attempts: int = 3) -> "StandaloneCluster":
        """Start the daemons; once the JobManager listens on its REST port (it, not another
        process: asked from /proc) and a slot is free, the cluster is up. Ports someone else took
        meanwhile: stop and try again on new ones."""
        for attempt in range(1, attempts + 1):
            self.write_config()
            subprocess.run([str(FLINK_HOME / "bin" / "start-cluster.sh")], env=self.env, check=True,
                           capture_output=True, timeout=60)
            try:
                self._wait_up(timeout_s)
                return self
            except PortError:
                self.stop()
                if attempt == attempts:
                    raise
                self.rest_port = free_port()

    def _wait_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not (pid_file := next((self.workdir / "pid").glob("*standalonesession.pid"), None)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the JobManager wrote no pid file:\n{self.log_tail()}")
            time.sleep(0.2)
        jobmanager = int(pid_file.read_text().split()[-1])
        wait_listening(jobmanager, self.rest_port, timeout_s=timeout_s, what="the JobManager's REST endpoint",
                       alive=lambda: _running(jobmanager))
        last = None
        while True:
            try:
                last = self.rest("/overview")
                if last["slots-available"] >= 1:
                    return
            except OSError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"no free task slot within {timeout_s}s (last /overview: {last}):\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self, grace_s: float = 20) -> None:
        """What stop-cluster.sh does, without its config-parsing JVMs: SIGTERM the daemons recorded
        in this cluster's pid files (they stop their Python workers), SIGKILL what outlives grace_s."""
        pids = self.daemon_pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.2)
        for pid_file in (self.workdir / "pid").glob("*.pid"):      # a restart starts from fresh pid files
            pid_file.unlink()

    def cancel(self, job_id: str) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}/jobs/{job_id}?mode=cancel", method="PATCH")
        urllib.request.urlopen(request, timeout=10).close()

    def rest(self, path: str):
        return FlinkRest(f"http://127.0.0.1:{self.rest_port}", timeout_s=10).get(path)

    def flink(self, *args: str, timeout_s: float = 180) -> str:
        """Run ``flink ARGS`` (or, for ``submit``, flink-conf/submit-job.sh) and return its output."""
        cmd = [str(SUBMIT), *args[1:]] if args[0] == "submit" else \
            [str(FLINK_HOME / "bin" / "flink"), *args]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def submit(self, job_yaml: Path, *options: str) -> str:
        out = self.flink("submit", str(job_yaml), *options)
        return re.search(r"Job has been submitted with JobID ([0-9a-f]{32})", out).group(1)

    def job_metrics(self, job_id: str) -> dict[str, str]:
        """Every metric of the job's vertices: ``<operator>.<name>`` → value (subtask 0)."""
        values = {}
        for vertex in self.rest(f"/jobs/{job_id}")["vertices"]:
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/metrics"
            ids = [m["id"] for m in self.rest(base) if m["id"].startswith("0.")]
            for chunk in range(0, len(ids), 40):
                for m in self.rest(f"{base}?get={','.join(ids[chunk:chunk + 40])}"):
                    values[m["id"][2:]] = m["value"]
        return values

    def prometheus(self) -> str:
        """Scrape the Prometheus reporters: each daemon takes the first free port of the configured
        range, so ask each daemon which port of the range it listens on."""
        text = []
        ports = {p for pid in self.daemon_pids() for p in listening_ports(pid, tree=False) if p in self.prom_ports}
        for port in sorted(ports):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text.append(r.read().decode())
            except OSError:
                pass
        return "\n".join(text)

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for log in sorted(self.log_dir.glob("*.log")):
            out.append(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


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

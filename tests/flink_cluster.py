"""A standalone Flink cluster for tests: a JobManager and one or more TaskManagers from the
distribution inside the apache-flink wheel (pyflink/bin/jobmanager.sh, taskmanager.sh: what
start-cluster.sh runs for local workers), configured from flink-conf/config.yaml with free
loopback ports and directories of its own. Each TaskManager can get environment variables of its
own (``taskmanagers=[{"VAR": "a"}, {"VAR": "b"}]``): two TaskManagers standing for two hosts."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyflink
import yaml

from connectors.embedded.ports import PortError, free_port, listening_ports, wait_listening
from jobs.flink_rest import FlinkRest

REPO = Path(__file__).resolve().parent.parent
FLINK_HOME = Path(pyflink.__file__).resolve().parent
SUBMIT = REPO / "flink-conf" / "submit-job.sh"     # the command docker-compose.yml runs too


def set_key(config: dict, dotted: str, value) -> None:
    """Set ``a.b.c`` in a nested Flink 2.x config.yaml mapping."""
    *parents, last = dotted.split(".")
    for p in parents:
        config = config.setdefault(p, {})
    config[last] = value


class StandaloneCluster:
    """A JobManager + TaskManagers from the wheel's Flink distribution, on loopback, with its own
    config/log/pid directories (nothing shared with other runs).

    ``taskmanagers``: resource id → environment variables added for that TaskManager (and so for
    its Python workers); default one TaskManager ``tm-0``. ``slots``: task slots per TaskManager
    (default: flink-conf/config.yaml's)."""

    def __init__(self, workdir: Path, taskmanagers: dict[str, dict[str, str]] | None = None,
                 slots: int | None = None) -> None:
        self.workdir = workdir
        self.taskmanagers = dict(taskmanagers or {"tm-0": {}})
        self.slots = slots
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
        if self.slots is not None:
            overrides["taskmanager.numberOfTaskSlots"] = self.slots
        for key, value in overrides.items():
            set_key(config, key, value)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(config))
        (self.conf_dir / "masters").write_text(f"127.0.0.1:{self.rest_port}\n")
        (self.conf_dir / "workers").write_text("127.0.0.1\n" * len(self.taskmanagers))
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
        """Start the daemons (what start-cluster.sh does for local workers: jobmanager.sh start,
        then taskmanager.sh start per TaskManager, each with its own environment); once the
        JobManager listens on its REST port (it, not another process: asked from /proc) and every
        TaskManager has registered its slots, the cluster is up. Ports someone else took
        meanwhile: stop and try again on new ones."""
        for attempt in range(1, attempts + 1):
            self.write_config()
            subprocess.run([str(FLINK_HOME / "bin" / "jobmanager.sh"), "start"], env=self.env, check=True,
                           capture_output=True, timeout=60)
            for resource_id, extra_env in self.taskmanagers.items():
                subprocess.run([str(FLINK_HOME / "bin" / "taskmanager.sh"), "start",
                                "-D", f"taskmanager.resource-id={resource_id}"],
                               env={**self.env, **extra_env}, check=True, capture_output=True, timeout=60)
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
                if last["taskmanagers"] >= len(self.taskmanagers) and last["slots-available"] >= len(self.taskmanagers):
                    return
            except OSError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every TaskManager registered a free slot within {timeout_s}s (last /overview: {last}):\n{self.log_tail()}")
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

    def wait_running(self, job_id: str, timeout_s: float = 180) -> None:
        """Until every subtask of the job runs (a savepoint can only be taken then)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.rest(f"/jobs/{job_id}")
            states = {v["name"]: v["status"] for v in job["vertices"]}
            if job["state"] == "RUNNING" and set(states.values()) == {"RUNNING"}:
                return
            if job["state"] in ("FAILED", "CANCELED", "FINISHED") or time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} is {job['state']}, vertices {states}:\n{self.log_tail()}")
            time.sleep(0.5)

    def wait_slots_free(self, timeout_s: float = 120) -> None:
        """Until every TaskManager is registered and all their slots are free again (the previous
        job has released them)."""
        deadline = time.monotonic() + timeout_s
        while (overview := self.rest("/overview"))["slots-available"] < overview["slots-total"] \
                or overview["taskmanagers"] < len(self.taskmanagers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"slots still taken after {timeout_s}s: {overview}")
            time.sleep(0.5)

    def placement(self, job_id: str, vertex: str) -> dict[int, str]:
        """Subtask index → the resource id of the TaskManager running it, for the vertex whose
        name contains ``vertex``."""
        for v in self.rest(f"/jobs/{job_id}")["vertices"]:
            if vertex in v["name"]:
                return {s["subtask"]: s["taskmanager-id"] for s in self.rest(f"/jobs/{job_id}/vertices/{v['id']}")["subtasks"]}
        raise KeyError(f"no vertex named like {vertex!r} in job {job_id}")

    def subtask_metric(self, job_id: str, name: str) -> dict[int, float]:
        """An operator metric per subtask (ids ``<subtask>.<operator>.<name>``), summed over the
        job's vertices."""
        values: dict[int, float] = {}
        for vertex in self.rest(f"/jobs/{job_id}")["vertices"]:
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/metrics"
            ids = [m["id"] for m in self.rest(base) if m["id"].endswith("." + name)]
            if ids:
                for m in self.rest(f"{base}?get={','.join(ids)}"):
                    subtask = int(m["id"].split(".", 1)[0])
                    values[subtask] = values.get(subtask, 0.0) + float(m["value"])
        return dict(sorted(values.items()))

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

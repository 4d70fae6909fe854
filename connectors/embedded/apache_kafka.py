"""An embedded Apache Kafka 4.x broker (single-node KRaft) for tests, the demo and ``dev``.

The same interface as :class:`connectors.embedded.tansu.EmbeddedBroker` (start, stop, kill,
restart, bootstrap_servers, is_running, context manager), running the real thing: ``kafka.Kafka``
from ``org.apache.kafka:kafka_2.13`` (jars fetched by ``mvn`` from ``flink-conf/maven/pom.xml``,
profile ``kafka-broker``; see :mod:`connectors.embedded.maven`) in a JVM, one node acting as
broker and controller on loopback, storage formatted with a random cluster id
(``kafka.tools.StorageTool format``), data and logs in a work folder.

Ports: two free loopback ports are chosen, the JVM binds them itself; if one was taken in the
meantime Kafka exits ("Socket server failed to bind") and the broker is started again on new
ports. It is ready when a metadata request on its port answers with *its own* cluster id (so a
stranger listening on that port is never mistaken for it). :meth:`restart` comes back on the same
ports with the same data.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from connectors.embedded.maven import classpath
from connectors.embedded.ports import free_port
from connectors.embedded.process import ProcessGroup
from connectors.embedded.tansu import BrokerError

MAVEN_PROFILE = "kafka-broker"
NODE_ID = 1
BIND_FAILURE = "failed to bind"        # Kafka's "Socket server failed to bind to 127.0.0.1:N: ..."

# What a single node needs (internal topics with one replica, no rebalance delay), and a small
# footprint on a shared 2-core machine.
SINGLE_NODE_SETTINGS: dict[str, str | int] = {
    "offsets.topic.replication.factor": 1,
    "offsets.topic.num.partitions": 4,
    "transaction.state.log.replication.factor": 1,
    "transaction.state.log.min.isr": 1,
    "transaction.state.log.num.partitions": 4,
    "share.coordinator.state.topic.replication.factor": 1,
    "share.coordinator.state.topic.min.isr": 1,
    "min.insync.replicas": 1,
    "default.replication.factor": 1,
    "group.initial.rebalance.delay.ms": 0,
    "num.network.threads": 2,
    "num.io.threads": 4,
}

LOG4J2 = """\
rootLogger.level = {level}
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def random_cluster_id() -> str:
    """A KRaft cluster id as ``kafka-storage random-uuid`` makes it (URL-safe base64 of 16 bytes)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):     # Kafka refuses ids that look like a command-line flag
            return cid


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH (Kafka 4 needs Java 17+)."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if not found:
        raise BrokerError("the embedded Apache Kafka broker needs Java 17+ (java on PATH or JAVA_HOME)")
    return found


class ApacheKafkaBroker(ProcessGroup):
    """Start/stop a single-node KRaft Apache Kafka broker on free loopback ports.

    ``workdir``: data (``data/``), configuration and log (default: a temporary folder, removed
    when the context manager exits). ``properties`` override or add ``server.properties`` keys.
    """

    def __init__(self, workdir: Path | None = None, log_path: Path | None = None, heap: str = "512m",
                 properties: dict[str, str | int] | None = None, log_level: str = "INFO",
                 attempts: int = 5) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="streamscore-kafka-"))
        self.data_dir = self.workdir / "data"
        self.log_path = Path(log_path) if log_path else self.workdir / "broker.log"
        self.heap = heap
        self.properties = dict(properties or {})
        self.log_level = log_level
        self.attempts = attempts
        self.port: int | None = None
        self.controller_port: int | None = None
        self.cluster_id: str | None = None
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 180.0) -> "ApacheKafkaBroker":
        """Format (the first time) and start the broker; return when it serves metadata.

        The first start picks ports and retries on new ones if Kafka cannot bind them; a start
        after :meth:`stop`/:meth:`kill` keeps the ports (and retries a bind failure a few times:
        a port can be held for a moment by someone probing for free ports)."""
        if self.is_running():
            return self
        first = self.cluster_id is None
        self.workdir.mkdir(parents=True, exist_ok=True)
        cp = classpath(MAVEN_PROFILE)          # fetched by mvn the first time (outside the timeout)
        deadline = time.monotonic() + timeout_s
        for attempt in range(1, self.attempts + 1):
            if first:
                self.port, self.controller_port = _two_free_ports()
                self.cluster_id = random_cluster_id()
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self._write_config()
                self._format(cp)
            self._launch(cp)
            outcome = self._await_ready(deadline)
            if outcome == "ready":
                return self
            self.kill()
            if outcome != "bind" or attempt == self.attempts or time.monotonic() > deadline:
                raise BrokerError(f"Apache Kafka did not start on {self.bootstrap_servers} "
                                  f"({outcome}; log {self.log_path}):\n{self.log_tail()}")
            if not first:
                time.sleep(1.0)                # same ports again, once whoever holds them lets go
        raise AssertionError("unreachable")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL if it takes longer than ``timeout_s``."""
        self.terminate(grace_s=timeout_s)

    def restart(self, timeout_s: float = 180.0) -> "ApacheKafkaBroker":
        """Start again on the same ports and data (after :meth:`kill` or :meth:`stop`)."""
        self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        """Stop, and remove the work folder if this broker made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ApacheKafkaBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines this broker's JVM wrote since its latest start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -------------------------------------------------------------------------------

    def _write_config(self) -> None:
        listeners = f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        props: dict[str, str | int] = {
            "process.roles": "broker,controller",
            "node.id": NODE_ID,
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            **SINGLE_NODE_SETTINGS,
            **self.properties,
        }
        (self.workdir / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j2.properties").write_text(LOG4J2.format(level=self.log_level))

    def _jvm(self, cp: str, heap: str) -> list[str]:
        return [java_binary(), f"-Xmx{heap}", f"-Xms{min(heap, '128m', key=_mb)}", "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}", "-cp", cp]

    def _format(self, cp: str) -> None:
        cmd = [*self._jvm(cp, "256m"), "kafka.tools.StorageTool", "format", "--cluster-id", self.cluster_id,
               "--config", str(self.workdir / "server.properties")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise BrokerError(f"kafka-storage format failed (exit {done.returncode}):\n"
                              f"{(done.stdout + done.stderr)[-3000:]}")

    def _launch(self, cp: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([*self._jvm(cp, self.heap), "kafka.Kafka", str(self.workdir / "server.properties")],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)

    def _await_ready(self, deadline: float) -> str:
        """``ready`` | ``bind`` (a port was taken) | ``exited`` | ``timeout``."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0,
                             "socket.connection.setup.timeout.ms": 2000})
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return "bind" if BIND_FAILURE in self.log_tail(400) else f"exited with code {self._proc.returncode}"
            try:
                md = admin.list_topics(timeout=1.0)
            except KafkaException:
                time.sleep(0.2)
                continue
            if md.cluster_id == self.cluster_id and NODE_ID in md.brokers:
                return "ready"
            if md.cluster_id != self.cluster_id:    # someone else answers on our port: ours failed to bind
                time.sleep(0.5)
                if self._proc.poll() is not None or BIND_FAILURE in self.log_tail(400):
                    return "bind"
            time.sleep(0.2)
        return "timeout"


def _two_free_ports() -> tuple[int, int]:
    return free_port(), free_port()          # never the same number twice


def _mb(size: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    return int(float(size[:-1]) * units[size[-1].lower()]) if size[-1].lower() in units else int(size) // 2**20

"""An embedded HDFS (Hadoop's MiniDFSCluster: one NameNode, one DataNode) for the file-sink tests.

Runs ``org.apache.hadoop.test.MiniDFSClusterManager`` (the command-line wrapper Hadoop ships around
``MiniDFSCluster``) from ``org.apache.hadoop:hadoop-client-minicluster`` in a JVM; the jars are
fetched by ``mvn`` from ``flink-conf/maven/pom.xml`` (profile ``hdfs-minicluster``, see
:mod:`connectors.embedded.maven`). NameNode metadata, DataNode blocks, the configuration it wrote
(``hdfs-site.xml``) and its log (``hdfs.log``) live in a work folder (a temporary one by default,
removed by :meth:`close`).

Ports: the NameNode RPC and HTTP servers and the DataNode bind port 0 themselves (no port is
chosen here and handed over, so nothing can take it in between); the ports are read from the
configuration the cluster writes once it is up, and the HTTP port is checked to belong to this JVM
(:func:`connectors.embedded.ports.wait_listening`). Everything listens on 127.0.0.1, and the
DataNode advertises 127.0.0.1, so WebHDFS's redirect of reads and writes to the DataNode works
without name resolution.

Clients: :attr:`webhdfs_url` (``webhdfs://127.0.0.1:<http port>``, fsspec's WebHDFS: pure HTTP,
what ``connectors.files`` uses here) and :attr:`hdfs_url` (``hdfs://127.0.0.1:<rpc port>``, for
JVM clients such as Flink's Hadoop filesystem; pyarrow's ``hdfs://`` would also need libhdfs.so,
which neither the pyarrow wheel nor Debian provides).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from connectors.embedded.maven import classpath
from connectors.embedded.ports import PortError, wait_listening
from connectors.embedded.process import ProcessGroup

MAVEN_PROFILE = "hdfs-minicluster"
MAIN_CLASS = "org.apache.hadoop.test.MiniDFSClusterManager"

# A small footprint on a shared 2-core machine; permissions off so any client user may write.
SETTINGS: dict[str, str | int] = {
    "dfs.permissions.enabled": "false",
    "dfs.replication": 1,
    "dfs.namenode.handler.count": 4,
    "dfs.datanode.handler.count": 3,
    "dfs.namenode.service.handler.count": 2,
    "dfs.blocksize": 16 << 20,
    "dfs.namenode.safemode.extension": 0,
}

LOG4J = """\
log4j.rootLogger={level},stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d{{ISO8601}} %p %c{{2}}: %m%n
log4j.logger.org.apache.hadoop.hdfs.StateChange=WARN
log4j.logger.org.apache.hadoop.hdfs.server.namenode.FSNamesystem.audit=WARN
log4j.logger.BlockStateChange=WARN
"""


class HDFSError(RuntimeError):
    """The embedded HDFS did not start (no Java, no jars, a failure in its log)."""


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH."""
    from connectors.embedded.apache_kafka import java_binary as find_java
    from connectors.embedded.tansu import BrokerError
    try:
        return find_java()
    except BrokerError as exc:
        raise HDFSError("the embedded HDFS needs Java (java on PATH or JAVA_HOME)") from exc


class EmbeddedHDFS(ProcessGroup):
    """Start/stop a MiniDFSCluster (1 NameNode + ``datanodes`` DataNodes) on loopback.

    ``workdir``: metadata, blocks, configuration and log (default: a temporary folder, removed by
    :meth:`close`). ``settings`` override or add Hadoop configuration keys."""

    def __init__(self, workdir: Path | None = None, heap: str = "512m", datanodes: int = 1,
                 settings: dict[str, str | int] | None = None, log_level: str = "INFO") -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="streamscore-hdfs-"))
        self.log_path = self.workdir / "hdfs.log"
        self.config_path = self.workdir / "hdfs-site.xml"
        self.heap = heap
        self.datanodes = datanodes
        self.settings = {**SETTINGS, **(settings or {})}
        self.log_level = log_level
        self.rpc_port: int | None = None
        self.http_port: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def webhdfs_url(self) -> str:
        """The root of the filesystem for fsspec's WebHDFS (``connectors.files`` targets)."""
        return f"webhdfs://127.0.0.1:{self.http_port}"

    @property
    def hdfs_url(self) -> str:
        """The root of the filesystem for Hadoop's own (RPC) client, e.g. Flink's checkpoints."""
        return f"hdfs://127.0.0.1:{self.rpc_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 300.0) -> "EmbeddedHDFS":
        """Format and start the cluster; return when WebHDFS answers on its HTTP port."""
        if self.is_running():
            return self
        cp = classpath(MAVEN_PROFILE)            # fetched by mvn the first time (outside the timeout)
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.workdir / "data", ignore_errors=True)
        for stale in (self.config_path, self.workdir / "details.json"):
            stale.unlink(missing_ok=True)
        (self.workdir / "log4j.properties").write_text(LOG4J.format(level=self.log_level))
        cmd = [java_binary(), f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true",
               f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
               f"-Dtest.build.data={self.workdir / 'data'}",
               "-cp", cp, MAIN_CLASS, "-format", "-datanodes", str(self.datanodes),
               "-nnport", "0", "-httpport", "0",
               "-D", f"hdfs.minidfs.basedir={self.workdir / 'data'}",
               *[a for k, v in self.settings.items() for a in ("-D", f"{k}={v}")],
               "-writeConfig", str(self.config_path), "-writeDetails", str(self.workdir / "details.json")]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.workdir, start_new_session=True)
        try:
            self._await_ready(time.monotonic() + timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the JVM (its shutdown hooks stop the nodes); SIGKILL after ``timeout_s``."""
        self.terminate(grace_s=timeout_s)

    def close(self) -> None:
        """Stop, and remove the work folder if this cluster made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedHDFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def configuration(self) -> dict[str, str]:
        """The Hadoop configuration the running cluster wrote (every key, defaults included)."""
        root = ET.parse(self.config_path).getroot()
        return {p.findtext("name"): p.findtext("value") or "" for p in root.iter("property")}

    # -- internals -------------------------------------------------------------------------------

    def _fail(self, why: str) -> HDFSError:
        return HDFSError(f"the embedded HDFS did not start: {why} (log {self.log_path}):\n{self.log_tail()}")

    def _await_ready(self, deadline: float) -> None:
        details = self.workdir / "details.json"
        while True:                 # the cluster writes its configuration, then its details, once up
            if self._proc.poll() is not None:
                raise self._fail(f"the JVM exited with code {self._proc.returncode}")
            if details.exists() and self.config_path.exists():
                try:
                    conf = self.configuration()
                    self.rpc_port = int(json.loads(details.read_text())["namenode_port"])
                    self.http_port = int(conf["dfs.namenode.http-address"].rsplit(":", 1)[1])
                    break
                except (ET.ParseError, ValueError, KeyError):
                    pass                                  # still being written
            if time.monotonic() > deadline:
                raise self._fail("no configuration written in time")
            time.sleep(0.2)
        try:
            for port in (self.rpc_port, self.http_port):
                wait_listening(self._proc.pid, port, timeout_s=max(1.0, deadline - time.monotonic()),
                               what="the MiniDFSCluster JVM", alive=self.is_running)
        except PortError as exc:
            raise self._fail(str(exc)) from exc
        url = f"http://127.0.0.1:{self.http_port}/webhdfs/v1/?op=GETFILESTATUS"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if json.load(reply)["FileStatus"]["type"] == "DIRECTORY":
                        return
            except (OSError, ValueError, KeyError):
                pass
            if not self.is_running():
                raise self._fail(f"the JVM exited with code {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise self._fail(f"WebHDFS did not answer on {url}")
            time.sleep(0.2)


if __name__ == "__main__":          # python -m connectors.embedded.hdfs: run one until Ctrl-C / SIGTERM
    import signal
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with EmbeddedHDFS() as cluster:
        print(f"{cluster.webhdfs_url}  {cluster.hdfs_url}  (log {cluster.log_path})", flush=True)
        try:
            while cluster.is_running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass

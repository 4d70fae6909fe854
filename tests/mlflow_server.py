"""A real MLflow tracking server on a free loopback port (SQLite backend, artifacts proxied under a
temporary folder), run from the side venv ``.venv-mlflow`` that ``make mlflow-deps`` makes: the
server is not a streamscore dependency; the project venv has only the mlflow-skinny client."""
from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from connectors.embedded.ports import free_port, wait_listening
from connectors.embedded.process import ProcessGroup

REPO = Path(__file__).resolve().parents[1]


def mlflow_binary() -> Path:
    venv = Path(os.environ.get("STREAMSCORE_MLFLOW_VENV", REPO / ".venv-mlflow"))
    return venv / "bin" / "mlflow"


class MlflowServer(ProcessGroup):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 600.0) -> "MlflowServer":
        """Start and wait until /health answers; the server takes ~30 s on an idle machine and
        measured 3 minutes with four helpers' test suites running."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_on_a_free_port(lambda: self._start_once(timeout_s), attempts=3, fixed_port=False,
                                  what="mlflow server", log=self.root / "mlflow.log")
        return self

    def _start_once(self, timeout_s: float) -> None:
        cmd = [str(mlflow_binary()), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts"]
        log = open(self.root / "mlflow.log", "ab")
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      cwd=self.root)
        log.close()
        wait_listening(self._proc.pid, self.port, timeout_s=timeout_s, what="mlflow server",
                       alive=lambda: self._proc.poll() is None)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except (urllib.error.URLError, OSError) as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server not healthy on {self.url}: {exc} "
                                       f"(log: {self.root / 'mlflow.log'})") from exc
                time.sleep(0.2)

    def stop(self) -> None:
        self.terminate(grace_s=10)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

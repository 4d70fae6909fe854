"""Running the scoring job as a separate process (its own MiniCluster), for the demo, tests,
benchmarks and chaos runs: start it, kill it like a crash, stop it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from connectors.embedded.ports import PortError, wait_listening
from jobs.flink_rest import FlinkRest


class JobProcess:
    """``python -m MODULE --config CFG`` (default: the Flink scoring job) in its own process group."""

    def __init__(self, config_path: Path, log_path: Path, extra_args: list[str] | None = None,
                 module: str = "jobs.score_stream", cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config_path = Path(config_path)
        self.log_path = Path(log_path)
        self.extra_args = extra_args or []
        self.module = module
        self.cwd = cwd or Path(__file__).resolve().parent.parent   # relative paths in the config
        self.env = env
        self._proc: subprocess.Popen | None = None
        self._rest: FlinkRest | None = None

    def start(self) -> "JobProcess":
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", self.module, "--config", str(self.config_path), *self.extra_args]
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      cwd=self.cwd, env={**os.environ, **self.env} if self.env else None)
        log.close()
        self._rest = None
        return self

    def rest(self, timeout_s: float = 120.0) -> FlinkRest:
        """The REST API of this job's MiniCluster. The job's config gives Flink a range of ports
        (``flink.conf["rest.bind-port"]``, set by ``EmbeddedStack.job_config``); Flink binds the
        first free one, and the one it bound is the port of that range the job's process tree
        listens on (asked from /proc: nothing is sent to the job's other servers)."""
        if self._rest is None:
            from jobs.config import load_config
            bind = str(load_config(self.config_path).flink.conf.get("rest.bind-port", ""))
            low, _, high = bind.partition("-")
            if not low.isdigit():
                raise RuntimeError(f"{self.config_path}: flink.conf has no rest.bind-port range to find the REST API in")
            span = range(int(low), int(high or low) + 1)
            try:
                port = wait_listening(self._proc.pid, timeout_s=timeout_s, what="the job's REST API",
                                      alive=self.is_running, accept=span.__contains__)
            except PortError as exc:
                raise RuntimeError(f"{exc}; last log lines:\n{self.log_tail()}") from exc
            self._rest = FlinkRest(f"http://127.0.0.1:{port}")
        return self._rest

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        """Raise with the log's tail if the job process has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"the scoring job exited with code {self._proc.returncode}; "
                               f"last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the whole process group (Python client and its Flink JVM), like a crash."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()

    def pause(self) -> None:
        """SIGSTOP the process group (e.g. to let input pile up before measuring a drain)."""
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self._proc.pid, signal.SIGCONT)

    def stop(self, grace_s: float = 10.0) -> None:
        if not self.is_running():
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.is_running():
            time.sleep(0.1)
        self.kill()

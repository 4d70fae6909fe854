"""The lifecycle every embedded service shares: a child in a process group of its own, stopped
like a service (SIGTERM, then SIGKILL after a grace period) or killed like a crash (SIGKILL)."""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Callable

from connectors.embedded.ports import PortError, free_port


class ProcessGroup:
    """Mixin for a service holding its child in ``self._proc`` (started with
    ``start_new_session=True``, so the group is the child's pid)."""

    _proc: subprocess.Popen | None = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash would (no shutdown, no flush)."""
        if self.is_running():
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()

    def terminate(self, grace_s: float) -> None:
        """SIGTERM the group (a controlled shutdown); SIGKILL what outlives ``grace_s``."""
        if self.is_running():
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def start_on_a_free_port(self, start_once: Callable[[], None], *, attempts: int, fixed_port: bool,
                             what: str, log: object, error: type[Exception] = RuntimeError,
                             stop: Callable[[], None] | None = None) -> None:
        """Call ``start_once`` (which starts the child on ``self.port`` and raises PortError when
        the child does not come to listen there); a port someone else took meanwhile is retried on
        a new one, unless the port is fixed; the last failure raises ``error``. ``stop`` cleans up a
        failed attempt (default: kill)."""
        for attempt in range(1, attempts + 1):
            try:
                start_once()
                return
            except PortError as exc:
                (stop or self.kill)()
                if fixed_port or attempt == attempts:
                    raise error(f"{what} could not listen on 127.0.0.1:{self.port}: {exc} (log: {log})") from exc
                self.port = free_port()

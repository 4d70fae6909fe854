"""The lifecycle every embedded service shares: a child in a process group of its own, stopped
like a service (SIGTERM, then SIGKILL after a grace period) or killed like a crash (SIGKILL)."""
from __future__ import annotations

import os
import signal
import subprocess


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

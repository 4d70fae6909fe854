"""Driving the `streamscore` command line as a user does: a subprocess, its console output read
line by line, signals sent to it, and the processes it leaves behind looked up in /proc."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def streamscore(*args: str, cwd: Path, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one command to its end (``timeout``: a deadline against hangs, not a speed check)."""
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT back to its default in the child, so Python turns it into KeyboardInterrupt: a shell
    that started the test run in the background (no job control) passes SIGINT on as ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Console:
    """A long-running `streamscore` command whose combined output is collected as it comes."""

    def __init__(self, *args: str, cwd: Path) -> None:
        # a session of its own: kill() can take the whole group, the children it started included
        self.proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
                                     start_new_session=True, preexec_fn=_ctrl_c_as_in_a_terminal)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float, what: str, after: int = 0) -> re.Match:
        """The first line (from index ``after``) matching ``pattern``; fails naming what was
        awaited and showing what was seen."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"awaited {what} (/{pattern}/) for {timeout:.0f} s; the command "
                             f"{'exited with ' + str(self.proc.returncode) if self.proc.poll() is not None else 'still runs'}"
                             f"; its last lines:\n" + "\n".join(self.lines[-30:]))

    def interrupt(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        """Send ``sig`` (Ctrl-C by default) and wait for the command to exit; if it does not,
        fail with its last lines and every thread's stack (the CLI dumps them on SIGUSR1)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(3)
            raise AssertionError(f"{signal.Signals(sig).name} did not stop the command in {timeout:.0f} s; its "
                                 "last lines and stacks:\n" + "\n".join(self.lines[-80:])) from None
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        """SIGKILL to the command and everything left in its process group (a broker or store
        it started, when a failed test kills it before it could stop them)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)


def pids_with(text: str) -> list[int]:
    """Processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: processes {left} still run {timeout:.0f} s after the stop")

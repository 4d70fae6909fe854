"""Runs ``plasma-store-server`` (shipped inside the pyarrow 11 wheel) as a child process: the
Plasma store of the demo, the tests, the benchmarks and ``streamscore features serve``."""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from connectors.feature_store.base import FeatureStoreError
from connectors.feature_store.plasma_objects import socket_alive


def server_executable() -> str:
    """The ``plasma-store-server`` binary shipped inside the pyarrow 11 wheel."""
    exe = Path(pa.__file__).parent / "plasma-store-server"
    if not exe.exists():
        raise FeatureStoreError(f"plasma-store-server not found at {exe} (needs pyarrow 11)")
    return str(exe)


MAX_SOCKET_PATH_BYTES = 107     # sockaddr_un.sun_path holds 108 bytes with the terminating NUL


class PlasmaServer:
    """Runs ``plasma-store-server`` as a child process (context manager).

    ``memory_bytes`` is the shared-memory capacity; size it for two versions of the largest
    table (the current one and the one being published).
    """

    def __init__(self, socket_path: str | os.PathLike, memory_bytes: int, *,
                 directory: str = "/dev/shm", hugepages: bool = False,
                 die_with_parent: bool = True, log_path: str | os.PathLike | None = None):
        self.socket_path = str(socket_path)
        self.memory_bytes = int(memory_bytes)
        self.directory = directory
        self.hugepages = hugepages
        self.die_with_parent = die_with_parent
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def uri(self, name: str = "features") -> str:
        return f"plasma://{self.socket_path}?name={name}"

    def start(self, timeout_s: float = 10.0) -> "PlasmaServer":
        if self.is_running():
            return self
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH_BYTES:
            raise FeatureStoreError(f"the socket path is {len(os.fsencode(self.socket_path))} bytes long; a Unix "
                                    f"socket path takes at most {MAX_SOCKET_PATH_BYTES}: {self.socket_path}")
        if socket_alive(self.socket_path):
            raise FeatureStoreError(f"a plasma store already listens on {self.socket_path}")
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(self.socket_path)  # stale socket file of a dead store
        except FileNotFoundError:
            pass
        cmd = [server_executable(), "-s", self.socket_path, "-m", str(self.memory_bytes),
               "-d", self.directory] + (["-h"] if self.hugepages else [])
        # server output goes to a file, never a pipe (a full or closed pipe would stall/kill it)
        log = open(self.log_path, "a+b") if self.log_path else tempfile.TemporaryFile()   # read back on failure
        # PDEATHSIG fires when the *thread* that forked exits: only arm it from the main thread
        arm = self.die_with_parent and threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent if arm else None)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        try:
            while not socket_alive(self.socket_path):
                if self.process.poll() is not None:
                    log.seek(0)
                    err = log.read().decode(errors="replace").strip()[-500:]
                    self.process = None
                    raise FeatureStoreError(f"plasma-store-server exited: {err}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise FeatureStoreError(f"plasma-store-server did not listen on "
                                            f"{self.socket_path} within {timeout_s}s")
                time.sleep(0.02)
        finally:
            log.close()  # the child keeps its own descriptor
        return self

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout_s: float = 5.0) -> None:
        atexit.unregister(self.stop)
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        self.process = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "PlasmaServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _die_with_parent() -> None:
    """Child side: get SIGTERM when the parent dies (Linux), so tests never leak servers."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass

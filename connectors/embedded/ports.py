"""Race-free loopback ports for the processes the embedded stack and the tests start.

The classic ``bind(("127.0.0.1", 0))``, close, hand the number to a child process is racy twice
over: the kernel takes that number from the *ephemeral* range, the same range every outgoing
connection's local port comes from, so by the time the child binds, a connection (a Kafka client,
a JVM, a test's HTTP request) may own it; and two test sessions on one machine can draw the same
number. Three rules make it safe here:

* :func:`free_port` draws at random **below** the kernel's ephemeral range
  (``/proc/sys/net/ipv4/ip_local_port_range``), where no connection is ever given a local port, and
  never hands out the same number twice in one process;
* a process started on a port is checked to be the one listening there
  (:func:`wait_listening` asks the kernel which sockets the process tree owns), so a port taken
  by someone else is a clear failure, never a conversation with the wrong server;
* where a server can bind port 0 itself, let it, and ask it (:func:`listening_ports`).
"""
from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Callable

_LOW_PORT = 20_000                 # below: well-known and registered services people run
_handed_out: set[int] = set()
_lock = threading.Lock()


class PortError(RuntimeError):
    """A process did not come to listen on its port."""


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ephemeral (outgoing and ``bind(0)``) ports."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port that is free now, below the ephemeral range, and not handed out before
    by this process. Whoever binds it should still check (:func:`wait_listening`)."""
    low, _ = ephemeral_range()
    high = max(low - 1, _LOW_PORT + 1_000)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    with _lock:
        for _ in range(1_000):
            port = rng.randint(_LOW_PORT, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    raise PortError(f"no free loopback port in {_LOW_PORT}-{high}")


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _listening_inodes() -> dict[int, int]:
    """Socket inode → port of every TCP socket in LISTEN state."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A":                # 0A = TCP_LISTEN
                found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def listening_ports(pid: int, tree: bool = True) -> set[int]:
    """The TCP ports process ``pid`` (and, with ``tree``, its descendants) listens on."""
    listening = _listening_inodes()
    ports: set[int] = set()
    for p in (_process_tree(pid) if tree else [pid]):
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                port = listening.get(int(target[8:-1]))
                if port is not None:
                    ports.add(port)
    return ports


def wait_listening(pid: int, port: int | None = None, *, timeout_s: float, what: str,
                   alive: Callable[[], bool] | None = None,
                   accept: Callable[[int], bool] | None = None) -> int:
    """Wait until the process tree of ``pid`` listens on ``port`` (any port ``accept`` takes, when
    ``port`` is None); the port. Raises :class:`PortError` saying what it saw when the process
    exits (``alive`` returns False) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    while True:
        seen = listening_ports(pid)
        if port is not None and port in seen:
            return port
        if port is None:
            for candidate in sorted(seen):
                if accept is None or accept(candidate):
                    return candidate
        if alive is not None and not alive():
            raise PortError(f"{what} exited before listening on "
                            f"{port if port is not None else 'its port'} (it listened on {sorted(seen) or 'nothing'})")
        if time.monotonic() > deadline:
            taken = f"; port {port} is taken by another process" if port and not _bindable(port) else ""
            raise PortError(f"{what} (pid {pid}) did not listen on {port if port is not None else 'a port'} "
                            f"within {timeout_s:.0f}s (it listens on {sorted(seen) or 'nothing'}{taken})")
        time.sleep(0.05)

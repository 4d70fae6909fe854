"""``plasma://`` backend: Arrow snapshots in a Plasma shared-memory object store.

Each published version is one sealed, immutable Plasma object (a `snapshot` IPC file) whose
20-byte id is ``b"ssf1" + hash8(name) + seq8``. Sealing is atomic, so the newest sealed id of a
name *is* the current version: no pointer object can be half-written. Every reader process maps
the same object (one copy in shared memory); the publisher deletes older versions, which
Plasma defers until the last reader has released them.

URI: ``plasma:///path/to/plasma.sock?name=features``.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyarrow.plasma as plasma  # noqa: E402  (pyarrow 11: the last line shipping Plasma)

from connectors.feature_store import snapshot as S  # noqa: E402
from connectors.feature_store.base import FeatureStoreError, FeatureStoreUnavailable  # noqa: E402
from connectors.feature_store.options import StoreOptions, StoreURI  # noqa: E402
from connectors.feature_store.shm_reader import SnapshotReader, StoreGone, quiet_release  # noqa: E402

PREFIX = b"ssf1"
ROOM_MARGIN = 1.02           # Plasma's allocator needs a little more than the object size
ROOM_SLACK = 4 << 20


def server_executable() -> str:
    """The ``plasma-store-server`` binary shipped inside the pyarrow 11 wheel."""
    exe = Path(pa.__file__).parent / "plasma-store-server"
    if not exe.exists():
        raise FeatureStoreError(f"plasma-store-server not found at {exe} (needs pyarrow 11)")
    return str(exe)


def socket_path(uri: StoreURI) -> str:
    path = (uri.netloc + uri.path) if uri.netloc else uri.path
    if not path:
        raise ValueError(f"plasma URI needs a socket path: {uri.raw!r}")
    return path


def quiet(fn):
    """Every Plasma ObjectID/client warns that Plasma is deprecated: we know (pyarrow pinned <12;
    arrow-shm is the way forward). Only control-path calls are wrapped, never the lookup path."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return fn(*args, **kwargs)
    return wrapper


def _name_hash(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=8).digest()


@quiet
def object_id(name: str, seq: int) -> plasma.ObjectID:
    return plasma.ObjectID(PREFIX + _name_hash(name) + seq.to_bytes(8, "big"))


def socket_alive(path: str, timeout: float = 0.5) -> bool:
    """Is something accepting connections on this unix socket? (silent, fast)"""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@quiet
def connect(path: str) -> plasma.PlasmaClient:
    """A client, or StoreGone when no store listens on ``path``."""
    if not socket_alive(path):
        raise StoreGone(f"no plasma store listening on {path}")
    try:
        return plasma.connect(path, num_retries=1)
    except OSError as exc:
        raise StoreGone(f"cannot connect to plasma store {path}: {exc}") from exc


@quiet
def versions(client: plasma.PlasmaClient, name: str, sealed_only: bool = True) -> dict[int, dict]:
    """Published versions of ``name``: seq -> Plasma object info."""
    prefix = PREFIX + _name_hash(name)
    out = {}
    for oid, info in client.list().items():
        raw = oid.binary()
        if raw.startswith(prefix) and (info["state"] == "sealed" or not sealed_only):
            out[int.from_bytes(raw[12:], "big")] = info
    return out


class PlasmaFeatureStore(SnapshotReader):
    """Reader of one named feature table in a Plasma store."""

    scheme = "plasma"

    def __init__(self, path: str, options: StoreOptions):
        super().__init__(options)
        self.path = path
        self._client: plasma.PlasmaClient | None = None
        try:
            self._client = connect(path)
        except StoreGone:
            self._lost_at = time.monotonic()  # first lookups reconnect with back-off

    def _location(self) -> str:
        return f"plasma://{self.path}?name={self.options.name}"

    @quiet
    def _latest(self) -> int | None:
        if self._client is None:
            raise StoreGone("not connected")
        try:
            seqs = versions(self._client, self.options.name)
        except OSError as exc:  # broken pipe: the store died
            raise StoreGone(str(exc)) from exc
        return max(seqs) if seqs else None

    @quiet
    def _open_version(self, seq: int) -> S.Snapshot | None:
        assert self._client is not None
        timeout_ms = int(self.options.timeout_s * 1000)
        try:
            [buf] = self._client.get_buffers([object_id(self.options.name, seq)], timeout_ms=timeout_ms)
        except OSError as exc:
            raise StoreGone(str(exc)) from exc
        if buf is None:  # deleted meanwhile (never blocks past the timeout)
            return None
        snap = S.Snapshot.open(buf, source=buf)
        snap.version = str(seq)
        return snap

    @quiet
    def _reconnect(self) -> None:
        client = connect(self.path)
        with quiet_release():
            old, self._client = self._client, client
            self._handle = None  # a restarted store numbers versions afresh
            del old

    @quiet
    def close(self) -> None:
        super().close()
        with quiet_release():
            if self._client is not None:
                try:
                    self._client.disconnect()
                except OSError:
                    pass
                self._client = None


def open_reader(uri: StoreURI, options: StoreOptions) -> PlasmaFeatureStore:
    """The reader of ``plasma:///socket?name=...``."""
    return PlasmaFeatureStore(socket_path(uri), options)


def publish(uri: StoreURI, name: str, table: pa.Table, key: str, progress: S.Progress | None = None) -> str:
    """`publish_to_socket` for a store URI."""
    return publish_to_socket(socket_path(uri), name, table, key, progress)


@quiet
def publish_to_socket(path: str, name: str, table: pa.Table, key: str, progress: S.Progress | None = None,
                      connect_timeout_s: float = 10.0) -> str:
    """Write ``table`` as a new version of ``name``; returns the version (sequence number).
    Readers switch to it at their next refresh; older versions are deleted (deferred by Plasma
    until their last reader releases them)."""
    client = _connect_wait(path, connect_timeout_s)
    try:
        existing = versions(client, name, sealed_only=False)
        seq = max(existing, default=0) + 1
        batch = S.encode(table, key, version=str(seq), progress=progress)
        size = S.ipc_size(batch)
        _ensure_room(client, name, size, existing)
        oid = object_id(name, seq)
        try:
            buf = client.create(oid, size)
        except plasma.PlasmaObjectExists:
            raise FeatureStoreError(f"another loader is publishing {name!r} version {seq}") from None
        except plasma.PlasmaStoreFull as exc:
            raise FeatureStoreError(f"plasma store {path} is full: {exc}") from exc
        writer = pa.FixedSizeBufferWriter(buf)
        S.write(batch, writer)
        client.seal(oid)
        del writer, buf  # releases our reference: readers keep theirs
        old = [object_id(name, s) for s in existing]
        if old:
            client.delete(old)
        return str(seq)
    finally:
        client.disconnect()


def _connect_wait(path: str, timeout_s: float) -> plasma.PlasmaClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return connect(path)
        except StoreGone as exc:
            if time.monotonic() > deadline:
                raise FeatureStoreUnavailable(str(exc)) from exc
            time.sleep(0.1)


def _ensure_room(client: plasma.PlasmaClient, name: str, size: int, existing: dict[int, dict]) -> None:
    """Refuse to publish when the new version does not fit next to the current ones: Plasma
    would otherwise evict unreferenced objects, possibly another table's current version."""
    need = int(size * ROOM_MARGIN) + ROOM_SLACK
    current = max(existing, default=None)
    stale = [object_id(name, s) for s, info in existing.items() if s != current and info["ref_count"] == 0]
    if stale:
        client.delete(stale)

    def free() -> int:
        used = sum(i["data_size"] + i["metadata_size"] for i in client.list().values())
        return client.store_capacity() - used

    if need > free():
        raise FeatureStoreError(
            f"plasma store too small: version needs ~{need >> 20} MiB, {max(free(), 0) >> 20} MiB free "
            f"of {client.store_capacity() >> 20} MiB. Size it for two versions "
            "(`streamscore features serve --memory`).")


@quiet
def delete_all(path: str, name: str) -> int:
    """Delete every version of ``name`` (deferred while readers hold them)."""
    client = connect(path)
    try:
        ids = [object_id(name, s) for s in versions(client, name, sealed_only=False)]
        if ids:
            client.delete(ids)
        return len(ids)
    finally:
        client.disconnect()


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
        log = open(self.log_path, "ab") if self.log_path else tempfile.TemporaryFile()
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

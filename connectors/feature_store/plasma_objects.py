"""Plasma object naming and client helpers shared by the ``plasma://`` reader, its publisher and
the Plasma server supervisor (``connectors.embedded.plasma_server``).

Each published version is one sealed, immutable Plasma object (a `snapshot` IPC file) whose
20-byte id is ``b"ssf1" + hash8(name) + seq8``. Sealing is atomic, so the newest sealed id of a
name *is* the current version: no pointer object can be half-written.
"""
from __future__ import annotations

import functools
import hashlib
import socket
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyarrow.plasma as plasma  # noqa: E402  (pyarrow 11: the last line shipping Plasma)

from connectors.feature_store.options import StoreURI  # noqa: E402
from connectors.feature_store.shm_reader import StoreGone  # noqa: E402

PREFIX = b"ssf1"


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

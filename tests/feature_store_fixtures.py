"""Fixtures and helpers of the feature-store tests (imported by tests/test_feature_store*.py)."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid

import numpy as np
import pyarrow as pa
import pytest

from connectors.embedded.plasma_server import PlasmaServer

N_FEATURES = 32


def feature_table(n: int, n_features: int = N_FEATURES, key: str = "entity_id", start: int = 0,
                  scale: float = 1.0, shuffle: bool = True, seed: int = 0) -> pa.Table:
    """Entity ids start..start+n-1 and float32 features f{j} = (id * scale + j) (checkable)."""
    ids = np.arange(start, start + n, dtype=np.int64)
    if shuffle:
        np.random.default_rng(seed).shuffle(ids)
    cols = {key: pa.array(ids)}
    for j in range(n_features):
        cols[f"f{j}"] = pa.array((ids * scale + j).astype(np.float32))
    return pa.table(cols)


def expected(ids, n_features: int = N_FEATURES, scale: float = 1.0) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    return (ids[:, None] * scale + np.arange(n_features)[None, :]).astype(np.float32)


def short_tmpdir() -> str:
    """Unix socket paths must stay under ~100 bytes: pytest's tmp_path can be too long."""
    return tempfile.mkdtemp(prefix="ssfs-", dir="/tmp")


@pytest.fixture
def plasma_server():
    d = short_tmpdir()
    server = PlasmaServer(os.path.join(d, "plasma.sock"), 256 << 20)
    with server:
        yield server
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shm_dir():
    path = f"/dev/shm/streamscore-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


REDIS_URL = os.environ.get("STREAMSCORE_TEST_REDIS", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("STREAMSCORE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def service_missing(reason: str):
    """Skip a test whose service is absent; fail it instead where the services must be there
    (``STREAMSCORE_REQUIRE_SERVICES=1``, which ``.ci/run`` sets after starting them)."""
    if os.environ.get("STREAMSCORE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (STREAMSCORE_REQUIRE_SERVICES=1: run `make services`)", pytrace=False)
    pytest.skip(reason)


def redis_uri(name: str) -> str:
    """A Redis store URI, or skip when Redis is not there."""
    try:
        import redis
    except ImportError:
        service_missing("redis client not installed (pip install '.[stores]')")
    if not _port_open(6379):
        service_missing("Redis is not running on 127.0.0.1:6379")
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        service_missing(f"Redis at {REDIS_URL} not usable: {exc}")
    return f"{REDIS_URL}?name={name}"


def postgres_uri(table: str) -> str:
    """A PostgreSQL store URI, or skip when PostgreSQL is not there."""
    try:
        import psycopg
    except ImportError:
        service_missing("psycopg not installed (pip install '.[stores]')")
    if not _port_open(5432):
        service_missing("PostgreSQL is not running on 127.0.0.1:5432")
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception as exc:  # noqa: BLE001
        service_missing(f"PostgreSQL at {POSTGRES_URL} not usable: {exc}")
    return f"{POSTGRES_URL}?table={table}"


def unique_name(prefix: str = "fs") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"

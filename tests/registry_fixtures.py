"""Fixtures of the registry tests: one registry per test on SQLite (a file in tmp_path) or
PostgreSQL (a schema of its own in the shared test database, dropped afterwards)."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store_fixtures import POSTGRES_URL, postgres_uri

MODELS = Path(__file__).resolve().parent / "fixtures" / "models"
FEATURES = ["amount", "age_days", "velocity", "ratio"]   # the inputs of the fixture models
BACKENDS = ["sqlite", "postgresql"]


def registry_uri(backend: str, tmp_path: Path) -> tuple[str, str | None]:
    """(URI, PostgreSQL schema to drop afterwards)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}", None
    postgres_uri("probe")                                   # skips (or fails under CI) without PostgreSQL
    schema = f"reg_{uuid.uuid4().hex[:12]}"
    return f"{POSTGRES_URL}?schema={schema}", schema


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=BACKENDS)
def registry_uri_for_test(request, tmp_path):
    uri, schema = registry_uri(request.param, tmp_path)
    yield uri
    if schema:
        drop_schema(schema)


@pytest.fixture
def reg(registry_uri_for_test, tmp_path):
    from registry import open_registry

    r = open_registry(registry_uri_for_test, cache_dir=tmp_path / "cache")
    r.init()
    yield r
    r.close()


def model_copy(tmp_path: Path, name: str = "logreg.onnx") -> Path:
    """A private copy of a fixture model (tests may corrupt or replace it)."""
    target = tmp_path / "artifacts" / uuid.uuid4().hex[:6] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODELS / name, target)
    return target


def features_table(n: int = 100, drop: tuple[str, ...] = (), types: dict | None = None,
                   key: str = "entity_id", extra: tuple[str, ...] = ()) -> pa.Table:
    types = types or {}
    cols = {key: pa.array(range(n), pa.int64())}
    for name in [*FEATURES, *extra]:
        if name in drop:
            continue
        typ = types.get(name, pa.float32())
        values = [float(i) for i in range(n)] if not pa.types.is_string(typ) else [str(i) for i in range(n)]
        cols[name] = pa.array(values, typ)
    return pa.table(cols)


def write_parquet(tmp_path: Path, table: pa.Table, name: str = "features.parquet") -> Path:
    target = tmp_path / "durable" / uuid.uuid4().hex[:6] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return target


@pytest.fixture
def pg_registry_uri(tmp_path):
    """A PostgreSQL registry URI with a schema of its own (for the PostgreSQL-only tests)."""
    uri, schema = registry_uri("postgresql", tmp_path)
    yield uri
    drop_schema(schema)

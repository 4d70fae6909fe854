"""Feature stores behind one interface: the `FeatureStore` protocol (`base.py`).

``open_store(uri)`` returns a reader, ``load_table(uri, table, key)`` publishes a new version.
Schemes: ``plasma://`` (default, shared memory), ``arrow-shm://`` (Arrow IPC file in /dev/shm),
``redis://`` and ``postgresql://``. A store answers a batch of keys with ``(features, found)``;
it neither decides what happens to an unknown entity (``operators.steps.MissingEntityPolicy``)
nor retries (``connectors.retry``): it fails fast with ``FeatureStoreUnavailable``.

To add a backend: one module here with a reader class (``common.StoreBase`` gives the protocol
on top of one ``_fetch``; ``shm_reader.SnapshotReader`` for shared-memory snapshots) and two
functions, ``open_reader(uri, options)`` and ``publish(uri, name, table, key, progress)``, then
one line in ``options.BACKENDS``. Backends import their client libraries lazily.
"""
from __future__ import annotations

import importlib
from typing import Any

import pyarrow as pa

from connectors.feature_store.base import (  # noqa: F401
    FeatureStore, FeatureStoreError, FeatureStoreUnavailable,
)
from connectors.feature_store.lineage import lineage_of  # noqa: F401
from connectors.feature_store.options import (  # noqa: F401
    BACKENDS, StoreOptions, StoreURI, is_shared_memory, parse_uri)
from connectors.feature_store.snapshot import Progress

__all__ = [
    "FeatureStore", "FeatureStoreError", "FeatureStoreUnavailable", "StoreOptions", "BACKENDS",
    "open_store", "load_table", "read_table_file", "parse_uri", "is_shared_memory", "lineage_of",
]

def backend(uri: StoreURI) -> Any:
    """The backend module of ``uri``'s scheme; an unknown scheme is an error, never a default."""
    if uri.scheme not in BACKENDS:
        raise ValueError(f"unknown feature-store scheme {uri.scheme!r} in {uri.raw!r}; "
                         f"expected one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[uri.scheme])


def open_store(uri: str, **options: Any) -> FeatureStore:
    """A reader for the store at ``uri``. ``options`` override the URI query (see StoreOptions):
    e.g. ``refresh_interval_s=0.5, stale_grace_s=0``."""
    u = parse_uri(uri)
    return backend(u).open_reader(u, StoreOptions.build(u.params, **options))


def load_table(uri: str, table: pa.Table, key: str, progress: Progress | None = None,
               replace_schema: bool = False, lineage: str | None = None) -> str:
    """Publish ``table`` (keyed by column ``key``) as a new version of the store at ``uri``.
    Readers switch to it atomically within their refresh interval; returns the version.

    A table whose features differ (names, order or types) from the version being served is
    refused with :class:`FeatureStoreError`, and the served version stays: running jobs were
    built for those features. ``replace_schema=True`` publishes it anyway. ``lineage``: the
    ``name@version`` lookups name as their source (shared-memory stores only; default
    ``<store name>@<version>``), e.g. the registry snapshot a host store was materialized from."""
    u = parse_uri(uri)
    module = backend(u)
    name = StoreOptions.build(u.params).name
    if key not in table.column_names:
        raise FeatureStoreError(f"the table has no key column {key!r} (columns: {table.column_names[:10]})")
    if not replace_schema:
        _refuse_schema_change(uri, pa.schema([f for f in table.schema if f.name != key]))
    if lineage is None:
        return module.publish(u, name, table, key, progress)
    if u.scheme not in ("plasma", "arrow-shm"):
        raise FeatureStoreError(f"{u.scheme}:// stores name versions themselves; lineage is for plasma and arrow-shm")
    return module.publish(u, name, table, key, progress, lineage=lineage)


def _refuse_schema_change(uri: str, features: pa.Schema) -> None:
    try:
        store = open_store(uri, stale_grace_s=0, prefault=False)  # only the schema is read
        try:
            current = store.schema
        finally:
            store.close()
    except FeatureStoreUnavailable:
        return          # nothing published yet: any schema may be the first
    if not features.equals(current):
        old = ", ".join(f"{f.name}:{f.type}" for f in current)
        new = ", ".join(f"{f.name}:{f.type}" for f in features)
        raise FeatureStoreError(f"refusing to replace the features served at {uri}: the new table's features "
                                f"differ from the current version's ({new[:300]} vs {old[:300]}); the current "
                                "version keeps serving. Publish with replace_schema=True (CLI: --replace-schema) "
                                "if every job reading this store expects the new features.")


def read_table_file(path: str) -> pa.Table:
    """A Parquet, Feather/Arrow or CSV file as an Arrow table."""
    try:
        return _read_table_file(path)
    except (pa.ArrowException, OSError) as exc:
        raise FeatureStoreError(f"cannot read the table file {path!r}: {exc}") from exc


def _read_table_file(path: str) -> pa.Table:
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq
        return pq.read_table(path)
    if lower.endswith((".arrow", ".feather", ".ipc")):
        import pyarrow.feather as feather
        return feather.read_table(path)
    if lower.endswith((".csv", ".csv.gz")):
        import pyarrow.csv as csv
        return csv.read_csv(path)
    raise FeatureStoreError(f"unsupported table file {path!r} (use .parquet, .arrow or .csv)")

"""``postgresql://`` backend: one table partitioned by version, packed rows as ``bytea``.

Schema (``<t>`` = the ``table`` URI option): ``<t>(version int, key bigint|text, v bytea)``
partitioned by LIST(version), one partition ``<t>_v<seq>`` per version (primary key on key),
and ``<t>_meta`` holding the current version and the feature schema. A lookup is one prepared
``SELECT key, v FROM <t>_v<seq> WHERE key = ANY($1)`` on the served version's partition (no
run-time partition pruning; ``key = $1`` for a single key). The publisher COPYs a new partition,
attaches it and flips the meta row in one transaction, then drops older partitions (DROP waits
for running lookups); a reader whose partition is gone re-reads the meta row and redoes the
lookup, so it never mixes versions.

URI: ``postgresql://postgres@127.0.0.1:5432/test?table=features``.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import time
from typing import Any

import numpy as np
import pyarrow as pa

from connectors.feature_store import keys as K
from connectors.feature_store.base import FeatureStoreError, FeatureStoreUnavailable
from connectors.feature_store.common import (
    Fetched, NetworkStore, dedupe, network_keys,
)
from connectors.feature_store.options import StoreOptions, StoreURI
from connectors.feature_store.rows import RowCodec, iter_chunks
from connectors.feature_store.snapshot import Progress, feature_schema

COPY_CHUNK = 50_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


def _table_name(name: str) -> str:
    if not _IDENT.match(name):
        raise FeatureStoreError(f"invalid PostgreSQL table name {name!r} (letters, digits, _)")
    return name


def _conninfo(uri: StoreURI) -> str:
    return uri.base.replace("postgres://", "postgresql://", 1)


def _kwargs(timeout_s: float) -> dict[str, Any]:
    ms = int(timeout_s * 1000)
    return {"autocommit": True, "connect_timeout": max(1, int(round(timeout_s))),
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"}


def _errors() -> tuple[type[BaseException], ...]:
    import psycopg
    return (psycopg.OperationalError, psycopg.InterfaceError, OSError)


class _Version:
    def __init__(self, version: int, meta: str):
        info = json.loads(meta)
        self.version = version
        self.key = info["key"]
        self.kind = info["key_kind"]
        self.codec = RowCodec(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(info["schema"]))))


class PostgresFeatureStore(NetworkStore):
    _network_errors = staticmethod(_errors)

    scheme = "postgresql"

    def __init__(self, uri: StoreURI, options: StoreOptions):
        super().__init__(options)
        self.uri = uri
        self.table = _table_name(options.name)
        self._conn = None
        self._aconn = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._current: _Version | None = None
        self._next_check = 0.0
        self._location = f"{uri.base}?table={self.table}"
        self._q_meta = f"SELECT version, meta FROM {self.table}_meta"

    # ---- helpers ------------------------------------------------------------------------------
    def _switch(self, row: tuple | None) -> _Version:
        if row is None:
            raise FeatureStoreUnavailable(f"postgres store {self.table!r}: no version published")
        version, meta = row
        if self._current is None or self._current.version != version:
            self._current = _Version(version, meta)
        self._next_check = time.monotonic() + self.options.refresh_interval_s
        return self._current

    def _statement(self, cur: _Version, uniq: np.ndarray) -> tuple[str, tuple, list]:
        """SQL, its parameters, and the keys in the form the rows return them."""
        part = f"{self.table}_v{cur.version}"
        keys = uniq.tolist() if cur.kind == K.INT else [str(k) for k in uniq.tolist()]
        if len(keys) == 1:
            return f"SELECT key, v FROM {part} WHERE key = %s", (keys[0],), keys
        cast = "bigint[]" if cur.kind == K.INT else "text[]"
        return f"SELECT key, v FROM {part} WHERE key = ANY(%b::{cast})", (keys,), keys  # binary params

    def _finish(self, cur: _Version, rows: list, uniq_list: list, inverse: np.ndarray | None) -> Fetched:
        got = dict(rows)
        values = [got.get(k) for k in uniq_list]
        records, found = cur.codec.from_bytes_list(values)
        if inverse is not None:
            records, found = records[inverse], found[inverse]
        return cur.codec, records, found, self._lineage(cur)

    # ---- sync ---------------------------------------------------------------------------------
    def _connection(self):
        if self._conn is None or self._conn.closed:
            import psycopg
            self._conn = psycopg.connect(_conninfo(self.uri), **_kwargs(self.options.timeout_s))
        return self._conn

    def _sync_version(self, force: bool) -> _Version:
        if self._current is not None and not force and time.monotonic() < self._next_check:
            return self._current
        import psycopg
        with self._connection().cursor() as c:
            try:
                c.execute(self._q_meta)
            except psycopg.errors.UndefinedTable:
                raise FeatureStoreUnavailable(f"postgres store {self.table!r}: never loaded") from None
            return self._switch(c.fetchone())

    def _fetch(self, keys: Any) -> Fetched:
        import psycopg
        uniq, inverse = dedupe(network_keys(keys))
        try:
            for attempt in range(4):
                cur = self._sync_version(force=attempt > 0)
                if len(uniq) == 0:
                    return cur.codec, np.empty(0, cur.codec.dtype), np.zeros(0, bool), self._lineage(cur)
                sql, params, keys_ = self._statement(cur, uniq)
                try:
                    with self._connection().cursor(binary=True) as c:
                        rows = c.execute(sql, params, prepare=True).fetchall()
                except psycopg.errors.UndefinedTable:
                    continue  # that version was just dropped: read the meta row again
                return self._finish(cur, rows, keys_, inverse)
        except _errors() as exc:
            self._drop_sync()
            raise self.unavailable(exc) from exc
        raise FeatureStoreUnavailable(f"postgres store {self.table!r}: version kept changing")

    def _drop_sync(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001  (already broken)
                pass
            self._conn = None

    # ---- async --------------------------------------------------------------------------------
    async def _aconnection(self):
        loop = asyncio.get_running_loop()
        if self._aconn is None or self._aconn.closed or self._aloop is not loop:
            import psycopg
            self._aconn = await psycopg.AsyncConnection.connect(_conninfo(self.uri),
                                                                **_kwargs(self.options.timeout_s))
            self._aloop = loop
        return self._aconn

    async def _async_version(self, force: bool) -> _Version:
        if self._current is not None and not force and time.monotonic() < self._next_check:
            return self._current
        conn = await self._aconnection()
        import psycopg
        async with conn.cursor() as c:
            try:
                await c.execute(self._q_meta)
            except psycopg.errors.UndefinedTable:
                raise FeatureStoreUnavailable(f"postgres store {self.table!r}: never loaded") from None
            return self._switch(await c.fetchone())

    async def _fetch_async(self, keys: Any) -> Fetched:
        import psycopg
        uniq, inverse = dedupe(network_keys(keys))
        try:
            for attempt in range(4):
                cur = await self._async_version(force=attempt > 0)
                if len(uniq) == 0:
                    return cur.codec, np.empty(0, cur.codec.dtype), np.zeros(0, bool), self._lineage(cur)
                sql, params, keys_ = self._statement(cur, uniq)
                conn = await self._aconnection()
                try:
                    async with conn.cursor(binary=True) as c:
                        await c.execute(sql, params, prepare=True)
                        rows = await c.fetchall()
                except psycopg.errors.UndefinedTable:
                    continue
                return self._finish(cur, rows, keys_, inverse)
        except _errors() as exc:
            self._aconn = None
            raise self.unavailable(exc) from exc
        raise FeatureStoreUnavailable(f"postgres store {self.table!r}: version kept changing")

    def close(self) -> None:
        self._drop_sync()
        conn, self._aconn = self._aconn, None
        if conn is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and loop is self._aloop:
                loop.create_task(conn.close())


def _copy_int_rows(seq: int, keys: np.ndarray, records: np.ndarray, itemsize: int) -> bytes:
    """Binary COPY tuples (version int4, key int8, v bytea) built with numpy in one go."""
    row = np.dtype([("nf", ">i2"), ("l1", ">i4"), ("ver", ">i4"), ("l2", ">i4"), ("key", ">i8"),
                    ("l3", ">i4"), ("v", f"V{itemsize}")])
    out = np.empty(len(keys), dtype=row)
    out["nf"], out["l1"], out["ver"], out["l2"], out["key"], out["l3"] = 3, 4, seq, 8, keys, itemsize
    out["v"] = records.view(f"V{itemsize}")
    return out.tobytes()


_COPY_HEADER = b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


def open_reader(uri: StoreURI, options: StoreOptions) -> PostgresFeatureStore:
    """The reader of a store URI of this scheme."""
    return PostgresFeatureStore(uri, options)


def publish(uri: StoreURI, name: str, table: pa.Table, key: str, progress: Progress | None = None,
            timeout_s: float = 600.0) -> str:
    """COPY ``table`` into a new partition, switch the meta row to it, drop older partitions."""
    import psycopg
    t = _table_name(name)
    kind, keys = K.table_keys(table, key)
    ktype = "bigint" if kind == K.INT else "text"
    schema = feature_schema(table, key)
    codec = RowCodec(schema)
    try:
        conn = psycopg.connect(_conninfo(uri), **_kwargs(timeout_s))
    except psycopg.OperationalError as exc:
        raise FeatureStoreUnavailable(f"postgres {uri.base}: {exc}") from exc
    with conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {t} (version integer NOT NULL, key {ktype} NOT NULL, "
                     f"v bytea NOT NULL) PARTITION BY LIST (version)")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {t}_meta (id boolean PRIMARY KEY DEFAULT true "
                     f"CHECK (id), version integer NOT NULL, meta text NOT NULL)")
        conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {t}_seq")
        have = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                            "attrelid = %s::regclass AND attname = 'key'", (t,)).fetchone()[0]
        if have != ktype:
            raise FeatureStoreError(f"table {t} has {have} keys; this table's keys are {ktype}")
        seq = conn.execute(f"SELECT nextval('{t}_seq')").fetchone()[0]
        part = f"{t}_v{seq}"
        conn.execute(f"CREATE TABLE {part} (LIKE {t}, CHECK (version = {seq}))")
        n = table.num_rows
        with conn.cursor() as cur:
            if kind == K.INT:
                with cur.copy(f"COPY {part} (version, key, v) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(_COPY_HEADER)
                    for start, stop in iter_chunks(n, COPY_CHUNK):
                        records = codec.pack(table.slice(start, stop - start))
                        copy.write(_copy_int_rows(seq, keys[start:stop], records, codec.itemsize))
                        if progress:
                            progress(stop, n)
                    copy.write(_COPY_TRAILER)
            else:
                with cur.copy(f"COPY {part} (version, key, v) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "text", "bytea"])
                    for start, stop in iter_chunks(n, COPY_CHUNK):
                        records = codec.pack(table.slice(start, stop - start))
                        for k, v in zip(keys[start:stop], codec.to_bytes_list(records)):
                            copy.write_row((seq, k, v))
                        if progress:
                            progress(stop, n)
        conn.execute(f"ALTER TABLE {part} ADD PRIMARY KEY (key)")
        conn.execute(f"ANALYZE {part}")
        meta = {"key": key, "key_kind": kind, "version": seq, "rows": n,
                "schema": base64.b64encode(schema.serialize().to_pybytes()).decode()}
        with conn.transaction():  # attach + flip: readers see the old version or the whole new one
            conn.execute(f"ALTER TABLE {t} ATTACH PARTITION {part} FOR VALUES IN ({seq})")
            conn.execute(f"INSERT INTO {t}_meta (version, meta) VALUES (%s, %s) ON CONFLICT (id) "
                         f"DO UPDATE SET version = EXCLUDED.version, meta = EXCLUDED.meta",
                         (seq, json.dumps(meta)))
        # older partitions, and partitions of loads that died before attaching theirs
        old = conn.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ %s "
                           "AND relname <> %s", (f"^{t.lower()}_v[0-9]+$", part)).fetchall()
        for (rel,) in old:
            conn.execute(f"DROP TABLE IF EXISTS {rel}")
    return str(seq)


def delete_all(uri: StoreURI, name: str) -> None:
    import psycopg
    t = _table_name(name)
    with psycopg.connect(_conninfo(uri), **_kwargs(60)) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
        conn.execute(f"DROP TABLE IF EXISTS {t}_meta")
        conn.execute(f"DROP SEQUENCE IF EXISTS {t}_seq")

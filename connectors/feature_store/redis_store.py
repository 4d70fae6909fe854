"""``redis://`` backend: one Redis hash per version, packed rows as values.

Keys: ``<name>:current`` (the served version), ``<name>:v<seq>`` (hash: entity key -> packed
record, see `rows.RowCodec`), ``<name>:v<seq>:meta`` (schema JSON), ``<name>:seq`` (counter).
A lookup is one HMGET (pipelined per 10k keys) on the version the reader serves. The
publisher writes the whole new hash, flips ``current``, then UNLINKs the old hash in one step:
a reader either reads the complete old hash or finds it gone, which it notices (a missing
key makes it re-read ``current``) and redoes the lookup on the new version. Readers also
re-read ``current`` every ``refresh_interval_s``. Install ``hiredis`` for fast replies.

URI: ``redis://127.0.0.1:6379/0?name=features``.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import numpy as np
import pyarrow as pa

from connectors.feature_store import keys as K
from connectors.feature_store.base import FeatureStoreUnavailable
from connectors.feature_store.common import (
    Fetched, NetworkStore, dedupe, network_keys,
)
from connectors.feature_store.options import StoreOptions, StoreURI
from connectors.feature_store.rows import RowCodec, iter_chunks
from connectors.feature_store.snapshot import Progress, feature_schema

CHUNK = 10_000


def _client(uri: StoreURI, timeout_s: float, asyncio_: bool = False):
    import redis
    import redis.asyncio
    cls = redis.asyncio.Redis if asyncio_ else redis.Redis
    return cls.from_url(uri.base, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def _errors() -> tuple[type[BaseException], ...]:
    import redis
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _fields(keys: np.ndarray) -> list[str]:
    return [str(k) for k in keys.tolist()]


class _Version:
    """A served version: its hash key and row codec."""

    def __init__(self, version: str, name: str, meta: bytes):
        info = json.loads(meta)
        self.version = version
        self.hash = f"{name}:v{version}"
        self.key = info["key"]
        self.codec = RowCodec(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(info["schema"]))))


class RedisFeatureStore(NetworkStore):
    _network_errors = staticmethod(_errors)

    scheme = "redis"

    def __init__(self, uri: StoreURI, options: StoreOptions):
        super().__init__(options)
        self.uri = uri
        self.name = options.name
        self._sync = _client(uri, options.timeout_s)
        self._async = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._current: _Version | None = None
        self._next_check = 0.0
        self._location = f"{uri.base}?name={self.name}"

    # ---- version tracking (shared by sync and async through generators of commands) -----------
    def _switch(self, version: bytes | None, meta_of) -> _Version:
        if version is None:
            raise FeatureStoreUnavailable(f"redis store {self.name!r}: no version published")
        version = version.decode()
        if self._current is None or self._current.version != version:
            meta = meta_of(version)
            if meta is None:  # replaced again meanwhile
                raise _VersionChanged()
            self._current = _Version(version, self.name, meta)
        self._next_check = time.monotonic() + self.options.refresh_interval_s
        return self._current

    def _finish(self, cur: _Version, replies: list, inverse: np.ndarray | None) -> Fetched:
        values = replies[0] if len(replies) == 1 else [v for r in replies for v in r]
        records, found = cur.codec.from_bytes_list(values)
        if inverse is not None:
            records, found = records[inverse], found[inverse]
        return cur.codec, records, found, self._lineage(cur)

    def _chunks(self, keys: Any) -> tuple[np.ndarray | None, list[list[str]]]:
        uniq, inverse = dedupe(network_keys(keys))
        fields = _fields(uniq)
        return inverse, [fields[a:b] for a, b in iter_chunks(len(fields), CHUNK)]

    # ---- sync ---------------------------------------------------------------------------------
    def _sync_version(self, force: bool) -> _Version:
        if self._current is not None and not force and time.monotonic() < self._next_check:
            return self._current
        return self._switch(self._sync.get(f"{self.name}:current"),
                            lambda v: self._sync.get(f"{self.name}:v{v}:meta"))

    def _fetch(self, keys: Any) -> Fetched:
        inverse, chunks = self._chunks(keys)
        try:
            for attempt in range(4):
                try:
                    cur = self._sync_version(force=attempt > 0)
                    if not chunks:
                        return cur.codec, np.empty(0, cur.codec.dtype), np.zeros(0, bool), self._lineage(cur)
                    if len(chunks) == 1:
                        replies = [self._sync.hmget(cur.hash, chunks[0])]
                    else:
                        pipe = self._sync.pipeline(transaction=False)
                        for c in chunks:
                            pipe.hmget(cur.hash, c)
                        replies = pipe.execute()
                    if any(None in r for r in replies):  # unknown key, or version just dropped?
                        if self._sync_version(force=True) is not cur:
                            continue
                    return self._finish(cur, replies, inverse)
                except _VersionChanged:
                    continue
        except _errors() as exc:
            raise self.unavailable(exc) from exc
        raise FeatureStoreUnavailable(f"redis store {self.name!r}: version kept changing during lookup")

    # ---- async --------------------------------------------------------------------------------
    def _async_client(self):
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async = _client(self.uri, self.options.timeout_s, asyncio_=True)
            self._async_loop = loop
        return self._async

    async def _async_version(self, client, force: bool) -> _Version:
        if self._current is not None and not force and time.monotonic() < self._next_check:
            return self._current
        version = await client.get(f"{self.name}:current")
        meta = None
        if version is not None and (self._current is None or self._current.version != version.decode()):
            meta = await client.get(f"{self.name}:v{version.decode()}:meta")
        return self._switch(version, lambda v: meta)

    async def _fetch_async(self, keys: Any) -> Fetched:
        client = self._async_client()
        inverse, chunks = self._chunks(keys)
        try:
            for attempt in range(4):
                try:
                    cur = await self._async_version(client, force=attempt > 0)
                    if not chunks:
                        return cur.codec, np.empty(0, cur.codec.dtype), np.zeros(0, bool), self._lineage(cur)
                    if len(chunks) == 1:
                        replies = [await client.hmget(cur.hash, chunks[0])]
                    else:
                        pipe = client.pipeline(transaction=False)
                        for c in chunks:
                            pipe.hmget(cur.hash, c)
                        replies = await pipe.execute()
                    if any(None in r for r in replies):
                        if await self._async_version(client, force=True) is not cur:
                            continue
                    return self._finish(cur, replies, inverse)
                except _VersionChanged:
                    continue
        except _errors() as exc:
            raise self.unavailable(exc) from exc
        raise FeatureStoreUnavailable(f"redis store {self.name!r}: version kept changing during lookup")

    def close(self) -> None:
        self._sync.close()
        client, self._async = self._async, None
        if client is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and loop is self._async_loop:
                loop.create_task(client.aclose())
            # otherwise its event loop is closed, and its sockets with it


class _VersionChanged(Exception):
    """The version was replaced while being opened: look it up again."""


def open_reader(uri: StoreURI, options: StoreOptions) -> RedisFeatureStore:
    """The reader of a store URI of this scheme."""
    return RedisFeatureStore(uri, options)


def publish(uri: StoreURI, name: str, table: pa.Table, key: str, progress: Progress | None = None,
            timeout_s: float = 30.0) -> str:
    """Write ``table`` as a new version hash, switch ``<name>:current`` to it, drop the others."""
    import redis
    kind, keys = K.table_keys(table, key)
    schema = feature_schema(table, key)
    codec = RowCodec(schema)
    client = _client(uri, timeout_s)
    try:
        seq = str(client.incr(f"{name}:seq"))
        hkey = f"{name}:v{seq}"
        n = table.num_rows
        for start, stop in iter_chunks(n, CHUNK):
            records = codec.pack(table.slice(start, stop - start))
            client.hset(hkey, mapping=dict(zip(_fields(keys[start:stop]), codec.to_bytes_list(records))))
            if progress:
                progress(stop, n)
        meta = {"key": key, "key_kind": kind, "version": seq, "rows": n,
                "schema": base64.b64encode(schema.serialize().to_pybytes()).decode()}
        client.set(f"{hkey}:meta", json.dumps(meta))
        stale = [k for k in client.scan_iter(match=f"{name}:v*", count=1000)
                 if k.decode() not in (hkey, f"{hkey}:meta")]
        pipe = client.pipeline(transaction=True)  # flip and drop in one atomic step
        pipe.set(f"{name}:current", seq)
        if stale:
            pipe.unlink(*stale)
        pipe.execute()
        return seq
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise FeatureStoreUnavailable(f"redis {uri.base}: {exc}") from exc
    finally:
        client.close()


def delete_all(uri: StoreURI, name: str) -> None:
    client = _client(uri, 30.0)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()

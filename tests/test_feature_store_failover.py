"""Store restart or loss: readers reconnect with back-off; lookups wait or raise
FeatureStoreUnavailable (-> dead letter ``feature_store_unavailable``), never lose features."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from connectors.embedded.ports import free_port, wait_listening
from connectors.feature_store import (
    FeatureStoreUnavailable, PlasmaServer, load_table, open_store, parse_uri,
)
from feature_store_fixtures import (  # noqa: F401
    feature_table, plasma_server, postgres_uri, service_missing, short_tmpdir, unique_name,
)

FAST = dict(refresh_interval_s=0.0, backoff_initial_s=0.01, backoff_max_s=0.05)


def test_plasma_loss_serves_held_snapshot_then_recovers_after_restart(plasma_server):
    uri = plasma_server.uri()
    load_table(uri, feature_table(1000), key="entity_id")
    store = open_store(uri, stale_grace_s=60, **FAST)
    assert store.lookup_numpy(np.array([5]))[0][0, 0] == 5.0
    plasma_server.stop()
    # the snapshot is immutable and still mapped: scoring goes on with the same features
    m, found = store.lookup_numpy(np.array([5, 6]))
    assert found.all() and m[1, 0] == 6.0
    plasma_server.start()
    load_table(uri, feature_table(1000, scale=2.0), key="entity_id")
    deadline = time.monotonic() + 10
    while store.lookup_numpy(np.array([5]))[0][0, 0] != 10.0:
        assert time.monotonic() < deadline, "reader never reconnected"
        time.sleep(0.02)
    store.close()


def test_plasma_loss_strict_raises_unavailable(plasma_server):
    uri = plasma_server.uri()
    load_table(uri, feature_table(100), key="entity_id")
    store = open_store(uri, stale_grace_s=0, **FAST)
    store.lookup(np.array([1]))
    plasma_server.stop()
    with pytest.raises(FeatureStoreUnavailable, match="unavailable"):
        store.lookup(np.array([1]))
    with pytest.raises(FeatureStoreUnavailable):  # back-off: fails fast, no reconnect storm
        asyncio.run(store.lookup_async(np.array([1])))
    store.close()


def test_wait_policy_blocks_until_the_store_is_back_and_never_blocks_the_loop():
    d = short_tmpdir()
    server = PlasmaServer(os.path.join(d, "p.sock"), 64 << 20)
    uri = server.uri()
    store = open_store(uri, unavailable="wait", wait_timeout_s=20, stale_grace_s=0, **FAST)

    def bring_up():
        time.sleep(0.3)
        server.start()
        load_table(uri, feature_table(100), key="entity_id")

    t = threading.Thread(target=bring_up)
    t.start()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def main():
        tick = asyncio.create_task(ticker())
        result = await store.lookup_numpy_async(np.array([42]))
        tick.cancel()
        return result

    try:
        m, found = asyncio.run(main())
        assert found.all() and m[0, 0] == 42.0
        assert ticks > 3  # the event loop kept running while the lookup waited
    finally:
        t.join()
        store.close()
        server.stop()


def test_wait_policy_gives_up_after_its_timeout():
    d = short_tmpdir()
    store = open_store(f"plasma://{d}/none.sock", unavailable="wait", wait_timeout_s=0.3, **FAST)
    with pytest.raises(FeatureStoreUnavailable):
        store.lookup(np.array([1]))
    store = open_store(f"arrow-shm://{d}/nothing-here", unavailable="wait", wait_timeout_s=0.2, **FAST)
    with pytest.raises(FeatureStoreUnavailable):
        store.lookup(np.array([1]))


def _start_redis(port: int, workdir: str) -> subprocess.Popen:
    """A private redis-server on ``port``, once it is the process listening there."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(proc.pid, port, timeout_s=30, what="redis-server", alive=lambda: proc.poll() is None)
    except BaseException:
        proc.kill()
        raise
    return proc


def test_redis_restart():
    pytest.importorskip("redis", reason="redis client not installed (pip install '.[stores]')")
    if shutil.which("redis-server") is None:
        service_missing("redis-server executable not installed: cannot restart a private Redis")
    port, d = free_port(), short_tmpdir()     # below the ephemeral range: still free for the restart
    uri = f"redis://127.0.0.1:{port}/0?name=feat"
    proc = _start_redis(port, d)
    try:
        load_table(uri, feature_table(100), key="entity_id")
        store = open_store(uri, timeout_s=1, **FAST)
        assert store.lookup_numpy(np.array([7]))[0][0, 0] == 7.0
        proc.terminate(), proc.wait()
        with pytest.raises(FeatureStoreUnavailable):
            store.lookup(np.array([7]))
        with pytest.raises(FeatureStoreUnavailable):
            asyncio.run(store.lookup_async(np.array([7])))
        proc = _start_redis(port, d)  # comes back empty...
        load_table(uri, feature_table(100, scale=2.0), key="entity_id")  # ...and is reloaded
        deadline = time.monotonic() + 10
        while True:
            try:
                m, _ = store.lookup_numpy(np.array([7]))
                assert m[0, 0] == 14.0
                break
            except FeatureStoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        m, _ = asyncio.run(store.lookup_numpy_async(np.array([7])))
        assert m[0, 0] == 14.0
        store.close()
    finally:
        proc.kill(), proc.wait()


def test_unreachable_network_stores_raise_unavailable_fast():
    pytest.importorskip("redis")
    pytest.importorskip("psycopg")
    # a port bound but never listened on: connections to it are refused for as long as we hold it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        for uri in (f"redis://127.0.0.1:{port}/0?name=x", f"postgresql://postgres@127.0.0.1:{port}/test?table=x"):
            store = open_store(uri, timeout_s=1)
            with pytest.raises(FeatureStoreUnavailable, match="unavailable"):
                store.lookup(np.array([1]))
            with pytest.raises(FeatureStoreUnavailable):
                asyncio.run(store.lookup_async(np.array([1])))
            store.close()


def test_postgres_connection_loss_reconnects():
    uri = postgres_uri(unique_name("fs"))
    import psycopg
    from connectors.feature_store.postgres_store import delete_all
    load_table(uri, feature_table(100), key="entity_id")
    try:
        store = open_store(uri, unavailable="wait", wait_timeout_s=10, **FAST)
        assert store.lookup_numpy(np.array([3]))[0][0, 0] == 3.0
        pid = store._conn.info.backend_pid
        with psycopg.connect(uri.split("?")[0], autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        m, found = store.lookup_numpy(np.array([3, 4]))  # first try fails, back-off, reconnect
        assert found.all() and m[1, 0] == 4.0 and store._conn.info.backend_pid != pid
        store.close()
    finally:
        delete_all(parse_uri(uri), parse_uri(uri).params["table"])


def _child_lookup(uri: str, keys: list[int], out: multiprocessing.Queue) -> None:
    store = open_store(uri)
    m, found = store.lookup_numpy(np.array(keys))
    out.put((m.tolist(), found.tolist(), store.version))
    store.close()


def test_several_worker_processes_share_one_copy(plasma_server):
    """Like Flink's Python workers: separate processes open the same URI and read one
    shared object (the store holds exactly one object for the table)."""
    uri = plasma_server.uri()
    load_table(uri, feature_table(5000), key="entity_id")
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_lookup, args=(uri, [i, 4999 - i], q)) for i in range(3)]
    [p.start() for p in procs]
    results = [q.get(timeout=60) for _ in procs]
    [p.join(30) for p in procs]
    for m, found, version in results:
        assert all(found) and version == "1"
        assert m[0][1] == m[0][0] + 1
    from connectors.feature_store.plasma_store import connect, versions
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = connect(plasma_server.socket_path)
        assert len(versions(client, "features")) == 1
        assert len(client.list()) == 1  # one object: the table, whatever the number of readers
        client.disconnect()

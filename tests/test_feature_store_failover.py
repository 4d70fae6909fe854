"""Store restart or loss: readers fail fast with FeatureStoreUnavailable (-> dead letter
``feature_store_unavailable`` once the job's retry policy gives up) and reconnect on a later
lookup; features are never lost."""
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
    FeatureStoreUnavailable, load_table, open_store, parse_uri,
)
from connectors.embedded.plasma_server import PlasmaServer
from connectors.retry import RetryPolicy
from feature_store_fixtures import (  # noqa: F401
    feature_table, plasma_server, postgres_uri, service_missing, short_tmpdir, unique_name,
)

FAST = dict(refresh_interval_s=0.0)
RETRY = RetryPolicy(retries=200, attempt_timeout_s=2.0, backoff_s=0.05)


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
    with pytest.raises(FeatureStoreUnavailable):  # fails fast, every time, saying why
        asyncio.run(store.lookup_async(np.array([1])))
    store.close()


def test_retry_policy_waits_until_the_store_is_back_and_never_blocks_the_loop():
    """The store fails fast while it is away; the job's retry policy tries again (the Flink
    operator's path: ``call_async``) until it is back, and the event loop keeps running."""
    d = short_tmpdir()
    server = PlasmaServer(os.path.join(d, "p.sock"), 64 << 20)
    uri = server.uri()
    store = open_store(uri, stale_grace_s=0, **FAST)

    def bring_up():
        time.sleep(0.3)
        server.start()
        load_table(uri, feature_table(100), key="entity_id")

    t = threading.Thread(target=bring_up)
    t.start()
    ticks, failures = 0, []

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def main():
        tick = asyncio.create_task(ticker())
        result = await RETRY.call_async(lambda: store.lookup_numpy_async(np.array([42])),
                                        retry_on=(FeatureStoreUnavailable,), on_failure=failures.append)
        tick.cancel()
        return result

    try:
        m, found = asyncio.run(main())
        assert found.all() and m[0, 0] == 42.0
        assert ticks > 3  # the event loop kept running while the lookup waited
        assert failures and all(isinstance(f, FeatureStoreUnavailable) for f in failures)
    finally:
        t.join()
        store.close()
        server.stop()


def test_retry_policy_gives_up_after_its_attempts_with_the_stores_reason():
    d = short_tmpdir()
    policy = RetryPolicy(retries=2, attempt_timeout_s=1.0, backoff_s=0.01)
    for uri in (f"plasma://{d}/none.sock", f"arrow-shm://{d}/nothing-here"):
        store = open_store(uri, **FAST)
        failures: list[BaseException] = []
        with pytest.raises(FeatureStoreUnavailable, match="unavailable"):
            policy.call(lambda: store.lookup(np.array([1])), retry_on=(FeatureStoreUnavailable,),
                        on_failure=failures.append)
        assert len(failures) == policy.attempts == 3
        with pytest.raises(FeatureStoreUnavailable):
            asyncio.run(policy.call_async(lambda: store.lookup_async(np.array([1])),
                                          retry_on=(FeatureStoreUnavailable,)))


def test_retry_policy_budget_is_the_one_timeout_formula():
    policy = RetryPolicy(retries=5, attempt_timeout_s=1.0, backoff_s=0.5)
    assert policy.budget_s() == 6 * 1.0 + 5 * 0.5 + RetryPolicy.SLACK_S

    async def slow():
        await asyncio.sleep(5)
    with pytest.raises(TimeoutError, match="longer than 50 ms"):
        asyncio.run(RetryPolicy(retries=1, attempt_timeout_s=0.05, backoff_s=0.01).call_async(
            slow, retry_on=(FeatureStoreUnavailable,)))


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
        store = open_store(uri, **FAST)
        assert store.lookup_numpy(np.array([3]))[0][0, 0] == 3.0
        pid = store._conn.info.backend_pid
        with psycopg.connect(uri.split("?")[0], autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # the first try fails fast, the policy tries again, the store reconnects
        m, found = RETRY.call(lambda: store.lookup_numpy(np.array([3, 4])), retry_on=(FeatureStoreUnavailable,))
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
    from connectors.feature_store.plasma_objects import connect, versions
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = connect(plasma_server.socket_path)
        assert len(versions(client, "features")) == 1
        assert len(client.list()) == 1  # one object: the table, whatever the number of readers
        client.disconnect()

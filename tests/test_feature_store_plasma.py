"""Plasma backend against a real plasma-store-server on a temporary socket."""
from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from connectors.feature_store import (
    FeatureStore, FeatureStoreError, load_table, open_store,
)
from connectors.embedded.plasma_server import PlasmaServer
from connectors.feature_store.plasma_objects import versions, connect
from feature_store_fixtures import expected, feature_table, plasma_server  # noqa: F401


def test_load_and_lookup(plasma_server):
    uri = plasma_server.uri("features")
    version = load_table(uri, feature_table(10_000), key="entity_id")
    assert version == "1"
    with open_store(uri) as store:
        assert isinstance(store, FeatureStore)
        assert store.version == "1"
        assert store.schema.names == [f"f{j}" for j in range(32)]
        assert store.schema.field("f0").type == pa.float32()
        keys = np.array([5, 9_999, 5, 10_000, -3, 0], dtype=np.int64)
        batch, found = store.lookup(keys)
        assert found.tolist() == [True, True, True, False, False, True]
        assert batch.num_rows == 6 and batch.schema.names == store.schema.names
        got = np.stack([batch.column(j).to_numpy(zero_copy_only=False) for j in range(32)], axis=1)
        np.testing.assert_array_equal(got[found], expected(keys[found]))
        assert batch.column("f3").null_count == 2  # missing keys -> null rows
        assert batch.column("f3")[3].as_py() is None
        matrix, found2 = store.lookup_numpy(keys)
        np.testing.assert_array_equal(matrix[found2], expected(keys[found2]))
        assert np.isnan(matrix[~found2]).all()


def test_lookup_accepts_arrow_and_lists_and_async(plasma_server):
    uri = plasma_server.uri()
    load_table(uri, feature_table(1000), key="entity_id")
    store = open_store(uri)
    b1, f1 = store.lookup(pa.array([1, 2, 3], type=pa.int32()))
    b2, f2 = asyncio.run(store.lookup_async(np.array([1, 2, 3])))
    assert b1.equals(b2) and f1.all() and f2.all()
    m, f = asyncio.run(store.lookup_numpy_async([7]))
    np.testing.assert_array_equal(m, expected([7]))
    empty, fe = store.lookup(np.array([], dtype=np.int64))
    assert empty.num_rows == 0 and fe.shape == (0,)
    store.close()


def test_sparse_and_string_keys(plasma_server):
    ids = np.array([10, 3, 1_000_000_007, -42], dtype=np.int64)
    t = pa.table({"k": ids, "x": pa.array([1.0, 2.0, 3.0, 4.0]), "n": pa.array([1, 2, 3, 4], pa.int32())})
    load_table(plasma_server.uri("sparse"), t, key="k")
    store = open_store(plasma_server.uri("sparse"))
    batch, found = store.lookup(np.array([-42, 11, 1_000_000_007, 10]))
    assert found.tolist() == [True, False, True, True]
    assert batch.column("x").to_pylist() == [4.0, None, 3.0, 1.0]
    assert batch.column("n").to_pylist() == [4, None, 3, 1]
    assert batch.schema.field("n").type == pa.int32()

    s = pa.table({"user": ["alice", "bob", "émile", "x" * 40], "score": pa.array([1.5, 2.5, 3.5, 4.5], pa.float32())})
    load_table(plasma_server.uri("users"), s, key="user")
    users = open_store(plasma_server.uri("users"))
    batch, found = users.lookup(pa.array(["bob", "carol", "émile", "x" * 41, "alice", "bob"]))
    assert found.tolist() == [True, False, True, False, True, True]
    assert batch.column("score").to_pylist() == [2.5, None, 3.5, None, 1.5, 2.5]
    store.close(), users.close()


def test_bad_tables_are_rejected(plasma_server):
    uri = plasma_server.uri()
    dup = pa.table({"entity_id": [1, 1], "f": [1.0, 2.0]})
    with pytest.raises(FeatureStoreError, match="duplicate"):
        load_table(uri, dup, key="entity_id")
    with pytest.raises(FeatureStoreError, match="no key column 'nope'"):
        load_table(uri, dup, key="nope")
    with pytest.raises(FeatureStoreError, match="only fixed-width"):
        load_table(uri, pa.table({"entity_id": [1], "s": ["a"]}), key="entity_id")


def test_too_small_store_refuses_instead_of_evicting(tmp_path):
    import tempfile, os
    d = tempfile.mkdtemp(prefix="ssfs-", dir="/tmp")
    with PlasmaServer(os.path.join(d, "p.sock"), 8 << 20) as server:
        with pytest.raises(FeatureStoreError, match="too small"):
            load_table(server.uri(), feature_table(100_000), key="entity_id")


def test_new_version_switch_and_old_release(plasma_server):
    uri = plasma_server.uri()
    load_table(uri, feature_table(2000, scale=1.0), key="entity_id")
    reader = open_store(uri, refresh_interval_s=0.0)
    m, _ = reader.lookup_numpy(np.array([10]))
    assert m[0, 0] == 10.0 and reader.version == "1"
    assert load_table(uri, feature_table(3000, scale=2.0), key="entity_id") == "2"
    m, found = reader.lookup_numpy(np.array([10, 2500]))
    assert reader.version == "2" and found.all() and m[0, 0] == 20.0 and m[1, 0] == 5000.0
    client = connect(plasma_server.socket_path)
    assert sorted(versions(client, "features")) == [2]  # v1 freed: its only reader moved on
    client.disconnect()
    reader.close()


def test_server_lifecycle():
    import tempfile, os
    d = tempfile.mkdtemp(prefix="ssfs-", dir="/tmp")
    server = PlasmaServer(os.path.join(d, "p.sock"), 16 << 20)
    assert not server.is_running()
    server.start()
    try:
        assert server.is_running()
        with pytest.raises(FeatureStoreError, match="already listens"):
            PlasmaServer(server.socket_path, 16 << 20).start()
    finally:
        server.stop()
    assert not server.is_running() and not os.path.exists(server.socket_path)


def test_a_server_that_cannot_start_says_why(tmp_path):
    """A socket path longer than a Unix socket takes is refused up front, naming the limit; a
    server that exits at start reports the end of its own log (read back from the log file)."""
    long_path = tmp_path / ("d" * 120) / "p.sock"
    with pytest.raises(FeatureStoreError, match="at most 107"):
        PlasmaServer(str(long_path), 16 << 20).start()
    log = tmp_path / "plasma.log"
    with pytest.raises(FeatureStoreError, match="plasma-store-server exited: .+"):
        PlasmaServer(str(tmp_path / "p.sock"), 16 << 20, directory=str(tmp_path / "missing-dir"),
                     log_path=log).start()
    assert log.read_text().strip(), "the server's own words stay in its log"


def test_store_uri_names_a_per_host_socket_through_the_environment(plasma_server, monkeypatch):
    """``plasma://${VAR}?name=…``: one job configuration, each TaskManager's own store (the
    variable is read by the process that opens the store); an unset variable is an error."""
    load_table(plasma_server.uri("per-host"), feature_table(100), key="entity_id", lineage="host-a@1")
    monkeypatch.setenv("STREAMSCORE_PLASMA_SOCKET", plasma_server.socket_path)
    with open_store("plasma://${STREAMSCORE_PLASMA_SOCKET}?name=per-host") as store:
        assert store.lookup(np.array([7]))[1].tolist() == [True]
    monkeypatch.delenv("STREAMSCORE_PLASMA_SOCKET")
    with pytest.raises(ValueError, match=r"\$\{STREAMSCORE_PLASMA_SOCKET\}.*not set"):
        open_store("plasma://${STREAMSCORE_PLASMA_SOCKET}?name=per-host")

"""All four backends give the same answers for the same keys; policies; versions.

Plasma and arrow-shm need nothing external. Redis and PostgreSQL tests use the services on
127.0.0.1 (6379, 5432) and skip with the reason when they are absent.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from connectors import dead_letter as dl
from connectors.events import OFFSET_COLUMN, RAW_COLUMN
from connectors.feature_store import FeatureStoreError, lineage_of, load_table, open_store, parse_uri
from operators import steps
from operators.batch import MicroBatch
from operators.steps import MissingEntityPolicy
from feature_store_fixtures import (  # noqa: F401  (pytest fixtures)
    expected, feature_table, plasma_server, postgres_uri, redis_uri, shm_dir, unique_name,
)

BACKENDS = ["plasma", "arrow-shm", "redis", "postgres"]


@pytest.fixture(params=BACKENDS)
def store_uri(request):
    """A fresh, empty store URI of each backend (removed afterwards)."""
    backend = request.param
    name = unique_name("fs")
    if backend == "plasma":
        server = request.getfixturevalue("plasma_server")
        yield server.uri(name)
    elif backend == "arrow-shm":
        yield f"arrow-shm://{request.getfixturevalue('shm_dir')}"
    elif backend == "redis":
        uri = redis_uri(name)
        yield uri
        from connectors.feature_store.redis_store import delete_all
        delete_all(parse_uri(uri), name)
    else:
        uri = postgres_uri(name)
        yield uri
        from connectors.feature_store.postgres_store import delete_all
        delete_all(parse_uri(uri), name)


QUERY = np.array([17, 3, 17, 1999, 2000, -1, 0, 3, 123456789], dtype=np.int64)
FOUND = np.array([True, True, True, True, False, False, True, True, False])


def test_same_answers_on_every_backend(store_uri):
    table = feature_table(2000)
    assert load_table(store_uri, table, key="entity_id") == "1"
    with open_store(store_uri) as store:
        assert store.version == "1"
        assert store.schema.equals(table.schema.remove(0))
        batch, found = store.lookup(QUERY)
        np.testing.assert_array_equal(found, FOUND)
        # the reference answer, computed without any store
        ref = pa.RecordBatch.from_arrays(
            [pa.array(np.where(FOUND, expected(QUERY)[:, j], 0), pa.float32(), mask=~FOUND)
             for j in range(32)], names=[f"f{j}" for j in range(32)])
        assert batch.equals(ref)
        matrix, found = store.lookup_numpy(QUERY)
        np.testing.assert_array_equal(matrix[FOUND], expected(QUERY[FOUND]))
        assert np.isnan(matrix[~FOUND]).all()
        abatch, afound = asyncio.run(store.lookup_async(pa.array(QUERY)))
        assert abatch.equals(ref) and (afound == FOUND).all()
        empty, efound = store.lookup(np.array([], dtype=np.int64))
        assert empty.num_rows == 0 and len(efound) == 0


def test_every_answer_names_the_version_it_came_from(store_uri):
    """Lineage (issue #13): a lookup's answer names ``name@version`` of the snapshot that answered,
    on every path (batch, one key, missing key, async), and follows a version switch."""
    name = parse_uri(store_uri).params.get("name") or parse_uri(store_uri).params.get("table")
    table = feature_table(100)
    load_table(store_uri, table, key="entity_id")
    with open_store(store_uri, refresh_interval_s=0) as store:
        v1 = store.version
        answers = [store.lookup(QUERY)[0], store.lookup(np.array([3]))[0], store.lookup(np.array([-1]))[0],
                   asyncio.run(store.lookup_async(QUERY))[0]]
        lineages = {lineage_of(a) for a in answers}
        assert len(lineages) == 1 and lineages.pop().endswith(f"@{v1}")
        load_table(store_uri, table, key="entity_id")
        after = store.lookup(QUERY)[0]
        assert lineage_of(after).endswith(f"@{store.version}") and store.version != v1
        if name:            # arrow-shm's store is its directory: no name in the URI
            assert lineage_of(after) == f"{name}@{store.version}"


def test_string_keys_and_mixed_types(store_uri):
    t = pa.table({"user": ["alice", "bob", "émile"], "age": pa.array([30, 40, 50], pa.int16()),
                  "score": [0.5, 1.5, None], "vip": [True, False, True]})
    load_table(store_uri, t, key="user")
    with open_store(store_uri) as store:
        batch, found = store.lookup(["bob", "zoe", "émile", "bob"])
        assert found.tolist() == [True, False, True, True]
        assert batch.schema.field("age").type == pa.int16()
        assert batch.column("age").to_pylist() == [40, None, 50, 40]
        assert batch.column("vip").to_pylist() == [False, None, True, False]
        score = batch.column("score").to_pylist()
        assert score[0] == 1.5 and score[1] is None and np.isnan(score[2])  # null float -> NaN


def test_stores_answer_features_and_found_and_the_pipeline_decides_about_missing_entities(store_uri):
    """The store's whole answer is (features, found): unknown keys get null rows. What happens to
    the event is the pipeline's setting (``steps.MissingEntityPolicy``), never a store option."""
    load_table(store_uri, feature_table(100, n_features=3), key="entity_id")
    keys = np.array([5, 500])
    with open_store(store_uri) as store:
        features, found = store.lookup(keys)
    assert found.tolist() == [True, False]
    assert features.column("f0").to_pylist() == [5.0, None]
    batch = MicroBatch("t", 0, pa.RecordBatch.from_pydict(
        {"entity_id": keys, OFFSET_COLUMN: np.array([10, 11]), RAW_COLUMN: [b"a", b"b"]}))
    dropped = steps.join_features(batch, features, found)             # default: dead-letter
    assert dropped.events.column("entity_id").to_pylist() == [5]
    assert [(d.reason, d.offset) for d in dropped.dead_letters] == [(dl.Reason.UNKNOWN_ENTITY, 11)]
    kept = steps.join_features(batch, features, found, MissingEntityPolicy("score"))
    assert kept.events.num_rows == 2 and kept.events.column("f0").to_pylist() == [5.0, None]
    filled = steps.join_features(batch, features, found, MissingEntityPolicy("score", {"f0": -1.0, "f2": 9.0}))
    assert filled.events.column("f0").to_pylist() == [5.0, -1.0]
    assert filled.events.column("f2").to_pylist() == [7.0, 9.0]
    assert filled.events.column("f1").to_pylist()[1] is None and not filled.dead_letters
    with pytest.raises(ValueError, match="nope"):
        steps.join_features(batch, features, found, MissingEntityPolicy("score", {"nope": 1.0}))
    with pytest.raises(ValueError, match="only with on_missing: score"):
        MissingEntityPolicy("dead_letter", {"f0": 1.0})
    # the store options that used to route missing entities are refused, naming where they went
    sep = "&" if "?" in store_uri else "?"
    for bad in (f"{store_uri}{sep}missing=defaults&default.f1=4", f"{store_uri}{sep}missing=nulls"):
        with pytest.raises(ValueError, match="features.on_missing"):
            open_store(bad)
    with pytest.raises(ValueError, match="features.on_missing"):
        open_store(store_uri, missing="nulls")


def test_an_unknown_scheme_or_option_is_an_error_not_a_default_store():
    for uri in ("postgre://postgres@127.0.0.1/test?table=x", "mysql://h/db", "/dev/shm/features"):
        with pytest.raises(ValueError, match="unknown feature-store scheme"):
            open_store(uri)
        with pytest.raises(ValueError, match="unknown feature-store scheme"):
            load_table(uri, feature_table(3), key="entity_id")
    with pytest.raises(ValueError, match="unknown feature-store options: \\['refresh'\\]"):
        open_store("arrow-shm:///dev/shm/streamscore-nothing?refresh=1")


def test_new_version_is_picked_up_without_restart(store_uri):
    load_table(store_uri, feature_table(500, scale=1.0), key="entity_id")
    with open_store(store_uri, refresh_interval_s=0.2) as store:
        m, found = store.lookup_numpy(np.array([10, 700]))
        assert m[0, 0] == 10.0 and found.tolist() == [True, False]
        assert load_table(store_uri, feature_table(1000, scale=3.0), key="entity_id") == "2"
        # old versions are dropped (or held until released): either way no half-written table
        m, found = store.lookup_numpy(np.array([10, 700]))
        assert m[0, 0] in (10.0, 30.0)
        import time
        deadline = time.monotonic() + 30       # the reader refreshes every 0.2 s
        while store.version != "2":
            assert time.monotonic() < deadline, f"the reader still serves version {store.version} after 30 s"
            time.sleep(0.05)
            store.lookup_numpy(np.array([10]))
        m, found = store.lookup_numpy(np.array([10, 700]))
        assert store.version == "2" and found.all() and m[0, 0] == 30.0 and m[1, 0] == 2100.0


def test_lookup_with_no_version_is_unavailable(store_uri):
    from connectors.feature_store import FeatureStoreUnavailable
    store = open_store(store_uri, stale_grace_s=0)
    with pytest.raises(FeatureStoreUnavailable):
        store.lookup(np.array([1]))
    store.close()


def test_readers_never_mix_versions_while_loading(store_uri):
    """A reader hammers lookups while new versions are published: every batch comes from
    exactly one complete version (feature f0 = key * scale of that version)."""
    import threading
    keys = np.arange(1, 201, dtype=np.int64)
    load_table(store_uri, feature_table(300, n_features=2, scale=1.0), key="entity_id")
    store = open_store(store_uri, refresh_interval_s=0.0)
    seen, errors, done = set(), [], threading.Event()

    def reader():
        try:
            while not done.is_set():
                m, found = store.lookup_numpy(keys)
                assert found.all(), "a published version lacked keys"
                scales = set(np.unique(m[:, 0] / keys).tolist())
                assert len(scales) == 1, f"batch mixes versions: {scales}"
                seen.add(scales.pop())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for scale in (2.0, 3.0, 4.0):
            load_table(store_uri, feature_table(300, n_features=2, scale=scale), key="entity_id")
    finally:
        import time
        time.sleep(0.05)
        done.set()
        t.join(30)
        store.close()
    assert not errors, errors[0]
    assert seen <= {1.0, 2.0, 3.0, 4.0}
    with open_store(store_uri) as latest:
        assert latest.lookup_numpy(keys[:1])[0][0, 0] == 4.0

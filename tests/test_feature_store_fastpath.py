"""The fast paths of the shared-memory readers and of the row codec give exactly the answers of
the general path: one-key lookups (zero-copy row slices, cached missing rows), RecordBatches built
through a cached Arrow IPC header, and pages mapped up front (prefault).

Real Plasma server and /dev/shm files; the reference answers are built column by column here.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from connectors.feature_store import load_table, open_store
from connectors.feature_store.rows import RowCodec
from connectors.feature_store.shm_reader import wait_for_prefault
from feature_store_fixtures import expected, feature_table, plasma_server, shm_dir  # noqa: F401


@pytest.fixture(params=["plasma", "arrow-shm"])
def shm_uri(request):
    if request.param == "plasma":
        return request.getfixturevalue("plasma_server").uri("fast")
    return f"arrow-shm://{request.getfixturevalue('shm_dir')}"


def reference(keys, found, n_features: int = 32, fill=None) -> pa.RecordBatch:
    """The expected batch: rows of ``expected`` for found keys; null (or ``fill[j]``) otherwise."""
    rows = expected(np.where(found, keys, 0), n_features)
    cols = []
    for j in range(n_features):
        if fill is None:
            cols.append(pa.array(rows[:, j], pa.float32(), mask=~found))
        else:
            cols.append(pa.array(np.where(found, rows[:, j], fill[j]).astype(np.float32), pa.float32()))
    return pa.RecordBatch.from_arrays(cols, names=[f"f{j}" for j in range(n_features)])


def test_one_key_lookups_match_the_reference_in_every_key_form(shm_uri):
    load_table(shm_uri, feature_table(5000), key="entity_id")
    with open_store(shm_uri) as store:
        for key, hit in ((0, True), (4999, True), (1234, True), (5000, False), (-1, False)):
            ref = reference(np.array([key]), np.array([hit]))
            for query in (np.array([key]), [key], pa.array([key]), np.array([key], dtype=np.int32)):
                batch, found = store.lookup(query)
                assert found.dtype == bool and found.tolist() == [hit], query
                assert batch.equals(ref), (key, query)
            abatch, afound = asyncio.run(store.lookup_async([key]))
            assert abatch.equals(ref) and afound.tolist() == [hit]
            m, mfound = store.lookup_numpy(np.array([key]))
            assert mfound.tolist() == [hit] and m.shape == (1, 32) and m.flags.writeable
            if hit:
                np.testing.assert_array_equal(m, expected([key]))
            else:
                assert np.isnan(m).all()
        # each answer owns its found mask: changing one does not change the next
        _, f1 = store.lookup([7])
        f1[0] = False
        assert store.lookup([7])[1].tolist() == [True]


def test_one_key_missing_answer_is_a_null_row(shm_uri):
    load_table(shm_uri, feature_table(100, n_features=3), key="entity_id")
    with open_store(shm_uri) as store:
        batch, found = store.lookup([500])
        assert found.tolist() == [False]
        assert batch.num_rows == 1 and all(c.null_count == 1 for c in batch.columns)
        assert store.lookup([5])[0].column("f2").to_pylist() == [7.0]


def test_one_row_answers_survive_a_version_switch_and_close(shm_uri):
    load_table(shm_uri, feature_table(1000, scale=1.0), key="entity_id")
    store = open_store(shm_uri, refresh_interval_s=0.0)
    before, _ = store.lookup([10])
    assert before.column("f0").to_pylist() == [10.0]
    load_table(shm_uri, feature_table(1000, scale=3.0), key="entity_id")
    after, _ = store.lookup([10])  # refresh_interval 0: the next lookup switches
    assert store.version == "2" and after.column("f0").to_pylist() == [30.0]
    store.close()
    # the first answer still reads the (immutable) first version it was sliced from
    assert before.column("f0").to_pylist() == [10.0] and before.column("f31").to_pylist() == [41.0]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 1000])
@pytest.mark.parametrize("dtype", [pa.float32(), pa.float64(), pa.int16(), pa.int64(), pa.uint8()])
def test_codec_ipc_batches_equal_column_by_column_batches(n, dtype):
    names = [f"c{j}" for j in range(5)]
    codec = RowCodec(pa.schema([(c, dtype) for c in names]))
    assert codec.ipc_ok
    rng = np.random.default_rng(n)
    values = rng.integers(0, 100, (n, len(names))).astype(codec.matrix_dtype)
    records = np.ascontiguousarray(values).view(codec.dtype).reshape(n)
    found = np.ones(n, dtype=bool)
    batch = codec.to_batch(records, found)
    ref = pa.RecordBatch.from_arrays([pa.array(values[:, j], dtype) for j in range(len(names))], names=names)
    assert batch.equals(ref) and batch.schema.equals(ref.schema)
    batch.validate(full=True)
    # the batch owns its memory: changing the input afterwards changes nothing
    values[:] = 0
    assert batch.equals(ref)
    # and the same row count again reuses the cached header with new values
    again = codec.to_batch(np.ascontiguousarray(values).view(codec.dtype).reshape(n), found)
    assert all(c.to_pylist() == [0] * n for c in again.columns)


def test_codec_missing_rows_keep_validity():
    codec = RowCodec(pa.schema([(f"f{j}", pa.float32()) for j in range(3)]))
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    records = values.view(codec.dtype).reshape(4)
    found = np.array([True, False, True, False])
    nulls = codec.to_batch(records, found)
    assert nulls.column("f2").to_pylist() == [2.0, None, 8.0, None]
    # mixed dtypes and booleans take the column-by-column path
    mixed = RowCodec(pa.schema([("a", pa.float32()), ("b", pa.int8())]))
    flags = RowCodec(pa.schema([("x", pa.bool_()), ("y", pa.bool_())]))
    assert not mixed.ipc_ok and not flags.ipc_ok


def test_one_key_lookup_on_mixed_dtypes_and_string_keys_uses_the_general_path(shm_uri):
    t = pa.table({"k": pa.array([3, 1, 2]), "x": pa.array([1.5, 2.5, 3.5]), "n": pa.array([1, 2, 3], pa.int8())})
    load_table(shm_uri, t, key="k")
    with open_store(shm_uri) as store:
        batch, found = store.lookup([2])
        assert found.tolist() == [True] and batch.column("x").to_pylist() == [3.5]
        assert batch.column("n").to_pylist() == [3]


# --- prefault ---------------------------------------------------------------------------------

def _resident_bytes(array: np.ndarray) -> int:
    """Bytes of the mapping holding ``array`` that are mapped in this process (smaps Rss)."""
    addr = array.ctypes.data
    with open("/proc/self/smaps") as fh:
        inside = False
        for line in fh:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("mapping not found")


@pytest.mark.parametrize("prefault", [True, False])
def test_prefault_maps_the_whole_version_on_open(shm_dir, prefault):
    uri = f"arrow-shm://{shm_dir}?prefault={'true' if prefault else 'false'}"
    load_table(uri, feature_table(100_000, n_features=32, shuffle=False), key="entity_id")  # 12.8 MB rows
    with open_store(uri, refresh_interval_s=0.0) as store:
        store.lookup([1])
        wait_for_prefault()
        records = store._snap.records
        resident = _resident_bytes(records)
        if prefault:
            assert resident >= records.nbytes
        else:
            assert resident < records.nbytes // 4
        # a newer version is mapped the same way
        load_table(uri, feature_table(100_000, n_features=32, scale=2.0, shuffle=False), key="entity_id")
        assert store.lookup([1])[0].column("f0").to_pylist() == [2.0]
        wait_for_prefault()
        records = store._snap.records
        assert (_resident_bytes(records) >= records.nbytes) is prefault

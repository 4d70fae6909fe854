"""Model files and feature files are inputs too: a corrupt or mismatched replacement is refused
with a clear error, and what was serving keeps serving."""
from __future__ import annotations

import os
import re
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_helpers import onnx_variant
from connectors.embedded.plasma_server import PlasmaServer
from connectors.feature_store import FeatureStoreError, load_table, open_store, read_table_file
from jobs import demo_data
from jobs.cli import main as cli
from jobs.producer import produce
from model_formats import ModelLoadError
from model_formats.reloading import ReloadingModel


def _replace(path, data: bytes) -> None:
    """Deploy a file the safe way: write beside it, rename over it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def served_model(tmp_path):
    path = tmp_path / "fraud.onnx"
    shutil.copy(demo_data.demo_model(), path)
    return path


def test_truncated_replacement_is_refused_and_the_serving_model_stays(served_model, tmp_path):
    good = served_model.read_bytes()
    model = ReloadingModel(served_model, check_interval_s=0)
    version = model.model.version
    for bad in (good[: len(good) // 2], b"", b"\x80\x04garbage pickle", b"<PMML>not onnx</PMML>"):
        _replace(served_model, bad)
        assert model.check() is False
        assert model.model.version == version
        assert model.last_error
    assert model.failures == 4
    # the serving model still scores
    sample = pa.RecordBatch.from_pydict({n: np.ones(3, np.float32) for n in model.model.schema.input_names})
    assert model.model.predict(model.model.validate(sample).valid).num_rows == 3
    model.close()


def test_valid_replacement_takes_over(served_model, tmp_path):
    model = ReloadingModel(served_model, check_interval_s=0)
    onnx_variant(served_model, tmp_path / "v2.onnx", version="2")
    os.replace(tmp_path / "v2.onnx", served_model)
    assert model.check() is True
    assert model.model.version == "2" and model.reloads == 1
    assert model.check() is False, "an unchanged file is not loaded again"
    model.close()


def test_replacement_needing_new_inputs_is_refused(served_model, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from model_formats.export import export_onnx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    other = export_onnx(LogisticRegression().fit(x, x[:, 0] > 0), ["amount", "f0", "brand_new_feature"],
                        tmp_path / "other.onnx", name="other", version="9")
    model = ReloadingModel(served_model, check_interval_s=0)
    os.replace(other, served_model)
    assert model.check() is False
    assert "brand_new_feature" in model.last_error
    assert model.model.version == demo_data.DEMO_MODEL_VERSION
    model.close()


def test_a_broken_model_is_refused_at_first_load(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(demo_data.demo_model().read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="broken.onnx: not a readable ONNX model"):
        ReloadingModel(path)


def test_feature_table_with_another_schema_is_refused_and_the_served_version_stays(tmp_path):
    table = demo_data.features_table(1000)
    with PlasmaServer(tmp_path / "p.sock", 64 << 20) as server:
        uri = server.uri("features")
        v1 = load_table(uri, table, key="entity_id")
        store = open_store(uri, refresh_interval_s=0)
        keys = np.arange(10)
        before, found = store.lookup(keys)
        assert found.all()
        renamed = table.rename_columns([c if c != "f3" else "f3_renamed" for c in table.column_names])
        retyped = table.set_column(table.column_names.index("f5"), "f5", pa.compute.cast(table["f5"], pa.float64()))
        dropped = table.drop(["f31"])
        for bad in (renamed, retyped, dropped):
            with pytest.raises(FeatureStoreError, match="refusing to replace"):
                load_table(uri, bad, key="entity_id")
            after, found = store.lookup(keys)
            assert store.version == v1 and found.all() and after.equals(before)
        with pytest.raises(FeatureStoreError, match="no key column"):
            load_table(uri, table, key="customer")
        v2 = load_table(uri, dropped, key="entity_id", replace_schema=True)
        assert v2 != v1
        deadline = time.monotonic() + 5
        while store.lookup(keys)[0].num_columns != 31 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.lookup(keys)[0].num_columns == 31
        store.close()


def test_corrupt_feature_file_is_refused_with_a_clear_error(tmp_path, capsys):
    good = tmp_path / "features.parquet"
    pq.write_table(demo_data.features_table(100), good)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(good.read_bytes()[:200])
    with pytest.raises(FeatureStoreError, match="cannot read the table file"):
        read_table_file(str(corrupt))
    with PlasmaServer(tmp_path / "p.sock", 64 << 20) as server:
        assert cli(["features", "load", str(corrupt), "--store", server.uri("features")]) == 1
        assert "cannot read the table file" in capsys.readouterr().err


@pytest.mark.slow
def test_running_job_keeps_serving_through_a_bad_model_deploy_and_takes_a_good_one(stack, tmp_path):
    model_path = tmp_path / "serving.onnx"
    shutil.copy(stack.model_path, model_path)
    cfg = stack.job_config("model-swap", partitions=1, model__path=str(model_path), model__reload_interval_s=0.5)
    cfg.flink.conf["metrics.fetcher.update-interval"] = 500         # REST metrics: fresh
    job, reader = stack.start_job(cfg)

    def wait_counter(name: str, at_least: int, timeout_s: float = 120) -> None:
        """Until the job's own counter ``name`` (REST API) reaches ``at_least``."""
        pattern = re.compile(rf"\.({re.escape(name)})$")
        deadline = time.monotonic() + timeout_s
        while (seen := job.rest().operator_totals(pattern).get(name, 0)) < at_least:
            job.check_alive()
            assert time.monotonic() < deadline, f"{name} stayed at {seen} (< {at_least}) for {timeout_s}s"
            time.sleep(0.2)

    try:
        def run_batch(seed: int) -> dict[str, str]:
            coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
                             demo_data.events(500, stack.entities, seed=seed, prefix=f"s{seed}"),
                             encode=demo_data.encode, settings=cfg.kafka.producer)
            tally = reader.wait_for(set(coords), timeout_s=300, stall_s=120, check=job.check_alive)
            assert not tally.missing(set(coords)) and not (set(coords) & set(tally.dead_letters))
            return {c: tally.predictions[c]["model_version"] for c in coords}

        assert set(run_batch(1).values()) == {"1"}
        # The scorer looks at its file before a micro-batch once reload_interval_s has passed since
        # its last look: after this pause (elapsed time, not a wait on the job) the next batch's
        # first micro-batch checks the file, however slow the machine.
        pause_s = 4 * cfg.model.reload_interval_s
        _replace(model_path, model_path.read_bytes()[:5000])      # a broken deploy
        time.sleep(pause_s)
        assert set(run_batch(2).values()) == {"1"}, "the serving model must stay after a broken deploy"
        wait_counter("model_reloads_refused", 1)                    # ... and the job said why, in its metrics
        onnx_variant(stack.model_path, tmp_path / "v2.onnx", version="2")
        os.replace(tmp_path / "v2.onnx", model_path)                # a good deploy
        time.sleep(pause_s)
        assert set(run_batch(3).values()) == {"2"}
        wait_counter("model_reloads", 1)
    finally:
        reader.stop()
        job.stop()

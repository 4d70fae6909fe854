"""A scorer follows a registry deployment (issue #13, "Jobs follow the registry"), without Flink:
``model_formats.reloading.ReloadingModel`` over ``registry.follow.RegistrySource`` on SQLite and
PostgreSQL. Promotion and rollback swap the serving model; artifacts that fail their sha256 or
the swap check are refused, the serving version stays and the refusal is in ``history``; a
registry that cannot be reached leaves the scorer serving, and following resumes when it is back.
(The real Flink job: tests/test_registry_job.py.)"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from model_formats.reloading import ReloadingModel
from registry import open_registry
from registry.follow import RegistrySource
from registry_fixtures import (  # noqa: F401 - fixtures
    FEATURES, MODELS, drop_schema, features_table, model_copy, reg, registry_uri, registry_uri_for_test,
    write_parquet,
)

WHO = dict(actor="tester@host", reason="test")
ENV = "integration"


def wait_until(condition, what: str, timeout_s: float = 30.0, seen=lambda: None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f} s for {what}; saw {seen()!r}"
        time.sleep(0.02)


def scores(model) -> list[float]:
    batch = pa.RecordBatch.from_pydict({n: np.linspace(0.1, 2.0, 5).astype(np.float32) for n in FEATURES})
    return model.predict(model.validate(batch).valid).column("score").to_pylist()


@pytest.fixture
def serving(reg, tmp_path):
    """fraud v1 (logreg) champion in integration, v2 (forest) registered; a scorer following it."""
    for name in ("logreg.onnx", "forest.onnx"):
        reg.register_model("fraud", str(model_copy(tmp_path, name)), **WHO)
    reg.promote("fraud", 1, ENV, **WHO)
    source = RegistrySource(reg.uri, "fraud", ENV, interval_s=0.2, cache_dir=tmp_path / "host-cache",
                            actor="job:test")
    model = ReloadingModel(source, check_interval_s=0)
    yield model
    model.close()


def refusals(reg, version: int) -> list:
    return [e for e in reg.history("fraud", env=ENV) if e.action == "refused-by-job" and e.to_version == version]


def test_starts_with_the_champion_named_as_registered(serving, reg):
    assert (serving.model.name, serving.model.version) == ("fraud", "1")
    assert serving.path.read_bytes() == (MODELS / "logreg.onnx").read_bytes()
    assert serving.source.available and serving.source.revision == reg.deployment("fraud", ENV).revision


def test_promotion_and_rollback_swap_between_batches(serving, reg):
    v1_scores = scores(serving.model)
    promoted = time.monotonic()
    reg.promote("fraud", 2, ENV, **WHO)
    wait_until(serving.check, "the scorer to take version 2", seen=lambda: serving.model.version)
    print(f"\npromotion -> swapped in {time.monotonic() - promoted:.2f} s ({reg.backend})")
    assert (serving.model.name, serving.model.version, serving.reloads) == ("fraud", "2", 1)
    assert scores(serving.model) != v1_scores
    assert serving.check() is False, "nothing new: no reload"
    reg.rollback("fraud", ENV, actor="ops", reason="drift")
    wait_until(serving.check, "the scorer to roll back to version 1", seen=lambda: serving.model.version)
    assert serving.model.version == "1" and scores(serving.model) == v1_scores
    assert not refusals(reg, 1) and not refusals(reg, 2)


def test_an_artifact_failing_its_sha256_is_refused_and_recorded(serving, reg, tmp_path):
    artifact = model_copy(tmp_path, "gbm.onnx")
    reg.register_model("fraud", str(artifact), **WHO)                      # v3
    artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])   # changed at its source
    reg.promote("fraud", 3, ENV, **WHO)
    [entry] = wait_until(lambda: refusals(reg, 3), "the refusal of version 3 in the history",
                         seen=lambda: [e.action for e in reg.history("fraud")])
    assert "sha256" in entry.reason and entry.actor == "job:test"
    assert serving.check() is False and serving.model.version == "1"
    # the next good promotion is taken
    reg.promote("fraud", 2, ENV, **WHO)
    wait_until(serving.check, "the scorer to take version 2 after the refused 3")
    assert serving.model.version == "2"


def test_a_version_needing_new_inputs_is_refused_by_the_swap_check_and_recorded(serving, reg, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from model_formats.export import export_onnx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    other = export_onnx(LogisticRegression().fit(x, x[:, 0] > 0), ["amount", "ratio", "brand_new_feature"],
                        tmp_path / "other.onnx", name="other", version="9")
    reg.register_model("fraud", str(other), **WHO)                          # v3
    reg.promote("fraud", 3, ENV, **WHO)
    wait_until(lambda: serving.check() or serving.failures, "the scorer to try version 3")
    assert serving.model.version == "1" and serving.failures == 1
    [entry] = wait_until(lambda: refusals(reg, 3), "the refusal of version 3 in the history")
    assert "brand_new_feature" in entry.reason


def test_no_deployment_is_a_clear_error(reg, tmp_path):
    from registry import RegistryError

    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    with pytest.raises(RegistryError, match="no deployment of 'fraud' in 'qa'.*registry promote fraud"):
        ReloadingModel(RegistrySource(reg.uri, "fraud", "qa", cache_dir=tmp_path / "c"), check_interval_s=0)


def test_postgres_notify_wakes_the_follower(tmp_path):
    """PostgreSQL: the follower waits on LISTEN with an hour-long timeout, so only a NOTIFY can
    bring it the promotion (the swap latency is printed, a figure, not asserted)."""
    uri, schema = registry_uri("postgresql", tmp_path)
    reg = open_registry(uri, cache_dir=tmp_path / "cache")
    try:
        reg.init()
        for name in ("logreg.onnx", "forest.onnx"):
            reg.register_model("fraud", str(model_copy(tmp_path, name)), **WHO)
        reg.promote("fraud", 1, ENV, **WHO)
        source = RegistrySource(uri, "fraud", ENV, interval_s=3600, cache_dir=tmp_path / "host", actor="job:pg")
        model = ReloadingModel(source, check_interval_s=0)
        time.sleep(0.5)                      # (not a wait on a condition: let the thread reach LISTEN)
        started = time.monotonic()
        reg.promote("fraud", 2, ENV, **WHO)
        wait_until(model.check, "the follower to be woken by NOTIFY", timeout_s=60, seen=lambda: source.wakeups)
        print(f"\nPostgreSQL NOTIFY: promotion -> swapped in {time.monotonic() - started:.3f} s")
        assert model.model.version == "2" and source.wakeups >= 1
        source.stop()
        reg.rollback("fraud", ENV, **WHO)    # wakes the listener once more, so it ends now
        model.close()
    finally:
        reg.close()
        drop_schema(schema)


def test_registry_outage_keeps_serving_and_following_resumes(tmp_path):
    """The registry database goes away (a proxy in front of PostgreSQL cuts every connection):
    the scorer keeps serving; a worker starting meanwhile serves the version its host served last;
    a promotion made meanwhile is taken by both once the registry is back."""
    from urllib.parse import urlsplit, urlunsplit

    from chaos.latency_proxy import LatencyProxy

    direct, schema = registry_uri("postgresql", tmp_path)
    parts = urlsplit(direct)
    proxy = LatencyProxy(parts.hostname, parts.port or 5432).start()
    via_proxy = urlunsplit((parts.scheme, f"{parts.username}@127.0.0.1:{proxy.port}", parts.path, parts.query, ""))
    reg = open_registry(direct, cache_dir=tmp_path / "cache")
    try:
        reg.init()
        for name in ("logreg.onnx", "forest.onnx"):
            reg.register_model("fraud", str(model_copy(tmp_path, name)), **WHO)
        reg.promote("fraud", 1, ENV, **WHO)
        source = RegistrySource(via_proxy, "fraud", ENV, interval_s=0.3, cache_dir=tmp_path / "host", actor="job:x")
        model = ReloadingModel(source, check_interval_s=0)
        v1_scores = scores(model.model)
        proxy.cut()
        wait_until(lambda: not source.available, "the follower to notice the outage")
        reg.promote("fraud", 2, ENV, **WHO)                 # made while the job cannot see the registry
        for _ in range(5):
            assert model.check() is False and scores(model.current()) == v1_scores   # still serving
            time.sleep(0.2)
        # a worker (re)started during the outage serves what this host served last
        restarted = ReloadingModel(RegistrySource(via_proxy, "fraud", ENV, interval_s=0.3,
                                                  cache_dir=tmp_path / "host", actor="job:y"), check_interval_s=0)
        assert restarted.model.version == "1" and not restarted.source.available
        proxy.restore()
        wait_until(model.check, "the follower to resume and take version 2",
                   seen=lambda: (source.available, model.model.version))
        assert source.available and model.model.version == "2"
        wait_until(restarted.check, "the restarted worker to follow once the registry is back")
        assert restarted.model.version == "2"
        restarted.close()
        model.close()
    finally:
        proxy.stop()
        reg.close()
        drop_schema(schema)


def test_preflight_checks_the_deployment_before_a_job_starts(reg, tmp_path):
    """`streamscore run` with model.registry: the champion is fetched and loaded, the pinned
    snapshot's columns stand in for an empty host store, a typo lists what exists."""
    from jobs.config import load_config
    from jobs.errors import UserError
    from jobs.preflight import check_model_fits, registry_champion

    snap = reg.register_snapshot("customers", str(write_parquet(tmp_path, features_table(20))),
                                 key_column="entity_id", **WHO)
    reg.register_model("fraud", str(model_copy(tmp_path)), feature_set=snap, **WHO)
    reg.promote("fraud", 1, ENV, **WHO)
    fields = "{id: string, entity_id: int, amount: float, ts: int}"
    cfg = load_config(None, [f"model.registry={reg.uri}", "model.name=fraud", f"model.env={ENV}",
                             f"events.fields={fields}"])
    model, columns = registry_champion(cfg)
    try:
        assert (model.name, model.version) == ("fraud", "1")
        assert set(columns) == set(FEATURES)
        check_model_fits(model, cfg, columns)
    finally:
        model.close()
    cfg.model.name = "fraudd"
    with pytest.raises(UserError, match=r"no deployment of 'fraudd' in 'integration'.*did you mean 'fraud'"):
        registry_champion(cfg)


def test_workers_of_one_host_record_a_refusal_once(reg, tmp_path):
    """Three workers on one host (one host cache) refuse the same corrupt version: one audit entry
    (a host marker next to the cache); each worker still refuses and keeps serving."""
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    reg.promote("fraud", 1, ENV, **WHO)
    workers = [ReloadingModel(RegistrySource(reg.uri, "fraud", ENV, interval_s=0.2, cache_dir=tmp_path / "host",
                                             actor=f"job:host:{i}"), check_interval_s=0) for i in range(3)]
    try:
        artifact = model_copy(tmp_path, "gbm.onnx")
        reg.register_model("fraud", str(artifact), **WHO)
        artifact.write_bytes(b"not the registered bytes")
        reg.promote("fraud", 2, ENV, **WHO)
        wait_until(lambda: all(w.source.refusals for w in workers), "every worker to refuse version 2",
                   seen=lambda: [w.source.refusals for w in workers])
        assert len(refusals(reg, 2)) == 1
        assert all(w.model.version == "1" and w.check() is False for w in workers)
    finally:
        for w in workers:
            w.close()

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.checkpoints import latest_checkpoint
from jobs.config import load_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("kafka:\n  input_topic: tx\nflink:\n  parallelism: 2\n")
    cfg = load_config(path, ["flink.parallelism=3", "kafka.consumer.fetch.wait.max.ms=500",
                             "flink.conf.taskmanager.numberOfTaskSlots=4", "model.path=/m/x.onnx"])
    assert cfg.kafka.input_topic == "tx"
    assert cfg.flink.parallelism == 3
    assert cfg.kafka.consumer == {"fetch.wait.max.ms": 500}
    assert cfg.flink.conf == {"taskmanager.numberOfTaskSlots": 4}
    assert cfg.model.path == "/m/x.onnx"


def test_typos_and_bad_values_are_named(tmp_path):
    with pytest.raises(ValidationError, match="paralelism"):
        load_config(None, ["flink.paralelism=2"])
    with pytest.raises(ValidationError, match="parallelism"):
        load_config(None, ["flink.parallelism=0"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, ["flink.parallelism"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        load_config(bad)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["kafka.bootstrap_servers=10.0.0.1:9092", "batch.max_events=500"])
    again = load_config(cfg.to_yaml(tmp_path / "c.yaml"))
    assert again == cfg


def test_model_from_a_registry_deployment(tmp_path):
    """model: {registry, name, env} instead of path (issue #13); errors name the keys in one line."""
    from jobs.errors import config_problems

    path = tmp_path / "job.yaml"
    path.write_text("model: {registry: 'sqlite:////tmp/r.db', name: fraud, env: qa}\n")
    cfg = load_config(path)
    assert cfg.model.follows_registry and (cfg.model.name, cfg.model.env) == ("fraud", "qa")
    spec = cfg.model.source("plasma:///tmp/p.sock?name=features")
    assert (spec.registry, spec.name, spec.env, spec.feature_store) == \
        ("sqlite:////tmp/r.db", "fraud", "qa", "plasma:///tmp/p.sock?name=features")
    assert cfg.model.source("redis://127.0.0.1:6379/0?name=f").feature_store is None   # not a host store
    assert load_config(cfg.to_yaml(tmp_path / "again.yaml")) == cfg
    assert load_config(None, ["model.path=/m/x.onnx"]).model.source() == "/m/x.onnx"
    for overrides, message in (
            (["model.registry=sqlite:////tmp/r.db"], "model: model.registry needs model.name"),
            (["model.registry=sqlite:////tmp/r.db", "model.name=f", "model.path=/m/x.onnx"],
             "model: model.path and model.registry are two ways to name the model: give one"),
            (["model.name=fraud"], "model: model.name names a registry deployment: set model.registry too"),
            (["model.follow_interval_s=0"], "model.follow_interval_s: Input should be greater than 0")):
        with pytest.raises(ValidationError) as caught:
            load_config(None, overrides)
        [problem] = config_problems(caught.value)
        assert problem.startswith(message) and "\n" not in problem, problem


def test_latest_checkpoint_picks_newest_complete_one(tmp_path):
    assert latest_checkpoint(tmp_path.as_uri()) is None
    for job, chk, complete in [("a", 1, True), ("a", 2, False), ("b", 7, True)]:
        d = tmp_path / job / f"chk-{chk}"
        d.mkdir(parents=True)
        if complete:
            (d / "_metadata").write_bytes(b"x")
    assert latest_checkpoint(tmp_path.as_uri()) == str(tmp_path / "b" / "chk-7")
    with pytest.raises(ValueError, match="explicit checkpoint path"):
        latest_checkpoint("s3://bucket/checkpoints")


def test_lookup_mode_async_by_default_auto_by_store_kind():
    from operators.flink.enrich import lookup_mode
    assert load_config(None).features.lookup == "async" and lookup_mode("plasma:///p") == "async"
    auto = [lookup_mode(uri, "auto") for uri in ("plasma:///tmp/p.sock?name=f", "arrow-shm:///dev/shm/x",
                                                  "redis://127.0.0.1:6379/0?name=f", "postgresql://u@h/db")]
    assert auto == ["inline", "inline", "async", "async"]
    assert lookup_mode("redis://h/0", "inline") == "inline" and lookup_mode("plasma:///p", "async") == "async"
    with pytest.raises(ValidationError, match="lookup"):
        load_config(None, ["features.lookup=threads"])

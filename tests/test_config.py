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

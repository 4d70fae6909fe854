"""The Beam job's experiments through the real broker, Plasma store and registry (issue #14):

* the streaming Beam job with a file shadow: every served event once in the shadow topic,
  processing-time comparison windows on the comparison topic;
* a bounded Beam run following a registry deployment with a shadow and a canary: every input once
  in the served output or the dead letters, every served event once in the shadow topic, the
  comparison topic's windows exactly those recorded in the registry (``source`` live);
* ``routes:`` from the job YAML through Kafka;
* ``streamscore registry replay``: a candidate scored on a recorded range beside the champion of
  that time, with the feature snapshot live then (read back from the registry's durable copy: the
  host store serves other features now), its windows recorded as a replay, shown by the report
  and not counted by a gated promote; refused when the champion changed within the range, when
  the candidate was the champion, and when the snapshot is no longer held.

SQLite registry; the DirectRunner in the test process."""
from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from beam_helpers import onnx_variant, read_outputs, run_bounded
from connectors.kafka.clients import ensure_topics, partitions_of
from jobs import demo_data
from jobs.config import ModelSettings
from jobs.producer import produce
from job_helpers import offline_scores
from operators.experiments import canary_mask
from registry import Environment, open_registry, write_dataset
from test_experiment_job import TopicReader

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("beam-replay")]   # the replay tests share one range

WHO = dict(actor="tester")
ENV = "production"
NAME = "fraud"
SHARE = 0.5


def stamped(ts_ms: int):
    return lambda event: json.dumps({**event, "ts": ts_ms}).encode()


def test_bounded_beam_run_follows_a_deployment_with_shadow_and_canary(stack, tmp_path):
    reg = open_registry(f"sqlite:///{tmp_path / 'registry.db'}", cache_dir=tmp_path / "registry-cache")
    reg.init(environments=[Environment(ENV, 0)])
    v2 = demo_data.demo_model(stack.entities, version="2")
    v3 = onnx_variant(v2, tmp_path / "v3.onnx", version="3")
    for path in (stack.model_path, v2, v3):
        reg.register_model(NAME, str(path), reason="model", **WHO)
    reg.promote(NAME, 1, ENV, reason="champion", **WHO)
    reg.promote(NAME, 2, ENV, role="shadow", reason="shadow", **WHO)
    reg.promote(NAME, 3, ENV, role="canary", share=SHARE, reason="canary", **WHO)

    cfg = stack.job_config(f"beam-exp-{uuid.uuid4().hex[:6]}", partitions=2)
    cfg.model = ModelSettings(registry=reg.uri, name=NAME, env=ENV, comparison_window_s=1)
    k = cfg.kafka
    ensure_topics(k.bootstrap_servers, {k.shadow_topic_name(): 2, k.comparison_topic_name(): 1})
    t0 = 1_700_000_040_000
    first = demo_data.events(400, stack.entities, seed=41, prefix="first")
    second = demo_data.events(400, stack.entities, seed=42, prefix="second")
    bad = [b'{"not json', json.dumps({"id": "unknown", "entity_id": stack.entities + 9, "amount": 2.0,
                                      "ts": t0 + 10}).encode()]
    coords = (produce(k.bootstrap_servers, k.input_topic, first, encode=stamped(t0 + 100))
              + produce(k.bootstrap_servers, k.input_topic, second, encode=stamped(t0 + 1_100))
              + produce(k.bootstrap_servers, k.input_topic, bad))
    topics = TopicReader(k.bootstrap_servers, [k.shadow_topic_name(), k.comparison_topic_name()])
    try:
        run_bounded(cfg, coords)
        tally = read_outputs(cfg, coords)
        assert not tally.missing(set(coords)) and tally.duplicate_predictions == 0
        assert Counter(tally.dead_letters.values()) == Counter({"invalid_json": 1, "unknown_entity": 1})
        served = [c for c in coords if c in tally.predictions]
        assert len(served) == 800
        rows = [tally.predictions[c] for c in served]
        by_canary = canary_mask(np.array([p["entity_id"] for p in rows]), f"{NAME}/{ENV}", SHARE)
        assert [(p["model"], p["model_version"], p["role"]) for p in rows] == \
            [(NAME, "3", "canary") if c else (NAME, "1", "champion") for c in by_canary]
        events = {e["id"]: e for e in first + second}
        ids = [p["event_id"] for p in rows]
        want = np.where(by_canary, offline_scores(v2, stack.features, events, ids),
                        offline_scores(stack.model_path, stack.features, events, ids))
        np.testing.assert_allclose([p["score"] for p in rows], want, rtol=1e-5, atol=1e-6)

        deadline = time.monotonic() + 60
        wanted = {f"{c}/{NAME}@2" for c in served}
        while {p["prediction_id"] for p in topics.get(k.shadow_topic_name())} != wanted or \
                len(topics.get(k.comparison_topic_name())) < 4:
            assert time.monotonic() < deadline, "shadow predictions or comparison windows missing"
            time.sleep(0.2)
        shadow = topics.get(k.shadow_topic_name())
        assert len(shadow) == len(wanted) and {(p["model_version"], p["role"]) for p in shadow} == {("2", "shadow")}
        published = topics.get(k.comparison_topic_name())
        recorded = reg.comparisons(NAME, ENV)
        key = lambda w: (w["role"], w["champion"], w["challenger"], w["window_start_ms"])  # noqa: E731
        assert sorted(map(key, published)) == sorted(map(key, recorded)) == sorted(
            (role, f"{NAME}@1", f"{NAME}@{v}", t0 + s) for role, v in (("shadow", 2), ("canary", 3))
            for s in (0, 1000))
        assert sum(w["compared"] for w in recorded if w["role"] == "shadow") == 800
        assert sum(w["compared"] for w in recorded if w["role"] == "canary") == int(by_canary.sum())
        assert reg.comparisons(NAME, ENV, source="replay") == []
    finally:
        topics.stop()
        reg.close()


def test_streaming_beam_job_shadows_every_event_and_compares_in_processing_time(stack, tmp_path):
    """The Beam job on an unbounded read (``python -m jobs.beam_score``, DirectRunner) with a file
    shadow: every served event once in the shadow topic, comparison windows on the comparison topic
    in processing time (the events carry a creation time from 2023: no window starts there)."""
    v2 = demo_data.demo_model(stack.entities, version="2")
    cfg = stack.job_config(f"beam-live-{uuid.uuid4().hex[:6]}", partitions=2)
    cfg.model.shadows = [str(v2)]
    cfg.model.shadow_budget_ms = 60_000          # a loaded machine: the shadow never misses a batch
    cfg.model.comparison_window_s = 1
    k = cfg.kafka
    ensure_topics(k.bootstrap_servers, {k.shadow_topic_name(): 2, k.comparison_topic_name(): 1})
    topics = TopicReader(k.bootstrap_servers, [k.shadow_topic_name(), k.comparison_topic_name()])
    job, reader = stack.start_job(cfg, module="jobs.beam_score")
    try:
        started_ms = time.time() * 1000
        old = 1_700_000_040_000
        records = demo_data.events(500, stack.entities, seed=61, prefix="live") + [b"{broken"]
        coords = produce(k.bootstrap_servers, k.input_topic, records, encode=stamped(old))
        tally = reader.wait_for(set(coords), timeout_s=300, stall_s=120, check=job.check_alive)
        assert not tally.missing(set(coords)) and tally.dead_letters[coords[-1]] == "invalid_json"
        served = [c for c in coords if c in tally.predictions]
        assert len(served) == 500
        wanted = {f"{c}/demo-fraud-gbm@2" for c in served}
        deadline = time.monotonic() + 120
        while True:             # a window closes with the first batch after its end: probes until then
            shadow = [p for p in topics.get(k.shadow_topic_name()) if p["prediction_id"] in wanted]
            windows = topics.get(k.comparison_topic_name())
            if len(shadow) >= len(wanted) and sum(w["compared"] for w in windows) >= len(wanted):
                break
            job.check_alive()
            assert time.monotonic() < deadline, f"{len(shadow)} of {len(wanted)} shadow predictions, windows {windows}"
            produce(k.bootstrap_servers, k.input_topic, demo_data.events(5, stack.entities, seed=62, prefix="probe"),
                    encode=demo_data.encode)
            time.sleep(0.5)
        assert sorted(p["prediction_id"] for p in shadow) == sorted(wanted)            # once each
        assert {(p["model_version"], p["role"]) for p in shadow} == {("2", "shadow")}
        assert {(w["role"], w["champion"], w["challenger"], w["window_ms"]) for w in windows} == \
            {("shadow", "demo-fraud-gbm@1", "demo-fraud-gbm@2", 1000)}
        assert all(w["window_start_ms"] >= started_ms - 60_000 for w in windows)     # processing time
    finally:
        reader.stop()
        job.stop()
        topics.stop()


def test_bounded_beam_run_routes_through_kafka(stack, tmp_path):
    """``routes:`` from the job YAML in the Beam job: every event to exactly its route's model, the
    rest dead letters ``no_route`` whose detail names the amount."""
    from jobs.config import JobConfig

    v2 = demo_data.demo_model(stack.entities, version="2")
    base = stack.job_config(f"beam-routes-{uuid.uuid4().hex[:6]}", partitions=2)
    data = base.model_dump(mode="json")
    data["routes"] = [{"name": "small", "when": {"field": "amount", "max": 10}, "model": str(stack.model_path)},
                      {"name": "large", "when": {"field": "amount", "min": 60}, "model": str(v2)}]
    cfg = JobConfig.model_validate(data)
    events = demo_data.events(600, stack.entities, seed=81, prefix="route")
    coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, events + [b"{broken"],
                     encode=demo_data.encode)
    run_bounded(cfg, coords)
    tally = read_outputs(cfg, coords)
    assert not tally.missing(set(coords)) and tally.duplicate_predictions == 0
    want = {c: ("1" if e["amount"] < 10 else "2" if e["amount"] >= 60 else None) for c, e in zip(coords, events)}
    assert {c: tally.predictions[c]["model_version"] for c in coords if c in tally.predictions} == \
        {c: v for c, v in want.items() if v}
    assert {c: r for c, r in tally.dead_letters.items() if c in set(coords)} == \
        {**{c: "no_route" for c, v in want.items() if v is None}, coords[-1]: "invalid_json"}
    assert 0 < sum(v is None for v in want.values()) < 600


@pytest.fixture(scope="module")
def replayed(stack, tmp_path_factory):
    """A deployment whose champion was v1 with snapshot customers@1 while the range A was produced,
    then v2 with customers@2 while B was; the host store serves neither snapshot."""
    tmp = tmp_path_factory.mktemp("replay")
    reg = open_registry(f"sqlite:///{tmp / 'registry.db'}", cache_dir=tmp / "registry-cache")
    reg.init(environments=[Environment(ENV, 0)])
    base = stack.features

    def scaled(factor: float) -> pa.Table:            # other values, same schema
        return pa.table([base.column(0)] + [pc.multiply(c, pa.scalar(factor, c.type)) for c in base.columns[1:]],
                        names=base.column_names)

    tables = {"customers@1": scaled(0.5), "customers@2": scaled(1.5)}
    durable = {ref: tmp / f"durable-{ref.split('@')[1]}" for ref in tables}
    for ref, table in tables.items():
        reg.register_snapshot("customers", write_dataset(table, str(durable[ref]), "customers"),
                              key_column="entity_id", reason=ref, **WHO)
    v2 = demo_data.demo_model(stack.entities, version="2")
    v3 = onnx_variant(v2, tmp / "v3.onnx", version="3")
    paths = {1: Path(stack.model_path), 2: v2, 3: v3}
    for version in (1, 2, 3):
        reg.register_model(NAME, str(paths[version]), reason=f"model {version}", **WHO)
    cfg = stack.job_config(f"replay-{uuid.uuid4().hex[:6]}", partitions=2)
    cfg.model.comparison_window_s = 5
    k = cfg.kafka
    reg.promote(NAME, 1, ENV, features="customers@1", reason="start", **WHO)
    events_a = demo_data.events(300, stack.entities, seed=51, prefix="a")
    coords_a = produce(k.bootstrap_servers, k.input_topic, events_a + [b"{broken"], encode=demo_data.encode)
    time.sleep(0.05)            # the promotion's time after the last record's (ms timestamps)
    reg.promote(NAME, 2, ENV, features="customers@2", reason="better", **WHO)
    time.sleep(0.05)
    events_b = demo_data.events(100, stack.entities, seed=52, prefix="b")
    coords_b = produce(k.bootstrap_servers, k.input_topic, events_b, encode=demo_data.encode)
    config = cfg.to_yaml(tmp / "job.yaml")
    partitions = partitions_of(k.bootstrap_servers, k.input_topic)
    yield {"reg": reg, "cfg": cfg, "config": config, "tmp": tmp, "tables": tables, "durable": durable,
           "paths": paths, "events": {e["id"]: e for e in events_a + events_b}, "coords_a": coords_a,
           "coords_b": coords_b, "partitions": partitions}
    reg.close()


def offsets_arg(coords: list[str], partitions: list[int], end: bool, rest: list[str] = ()) -> str:
    """``P=OFFSET,...``: the first offset of ``coords`` per partition (``end``: the one after the
    last); a partition none of them is in starts and ends at its first offset in ``rest`` (or 0)."""
    out = {}
    for p in partitions:
        mine = [int(c.rsplit("/", 1)[1]) for c in coords if int(c.rsplit("/", 2)[1]) == p]
        others = [int(c.rsplit("/", 1)[1]) for c in rest if int(c.rsplit("/", 2)[1]) == p]
        out[p] = (max(mine) + 1 if end else min(mine)) if mine else (min(others) if others else 0)
    return ",".join(f"{p}={o}" for p, o in sorted(out.items()))


def replay_args(r, coords, candidate: str, output: Path, rest=()) -> list[str]:
    return ["registry", "replay", NAME, "--env", ENV, "--candidate", candidate, "--config", str(r["config"]),
            "--registry", r["reg"].uri, "--from-offsets", offsets_arg(coords, r["partitions"], False, rest),
            "--to-offsets", offsets_arg(coords, r["partitions"], True, rest), "--output", str(output)]


def test_replay_scores_the_candidate_beside_the_champion_and_snapshot_of_then(replayed, capsys):
    from jobs.cli import main

    r = replayed
    output = r["tmp"] / "run-1" / "replay"
    assert main(replay_args(r, r["coords_a"], "3", output, rest=r["coords_b"])) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "champion then v1" in out and "customers@1" in out and "replay" in out
    assert f"{NAME}@1" in out and f"{NAME}@3" in out and "300" in out
    predictions = [json.loads(line) for f in output.parent.glob("replay-predictions*.jsonl")
                   for line in f.read_text().splitlines()]
    shadow = [json.loads(line) for f in output.parent.glob("replay-shadow*.jsonl") for line in f.read_text().splitlines()]
    letters = [json.loads(line) for f in output.parent.glob("replay-dead-letters*.jsonl")
               for line in f.read_text().splitlines()]
    assert sorted(p["prediction_id"] for p in predictions) == sorted(c for c in r["coords_a"][:-1])
    assert [d["source"] for d in letters] == [r["coords_a"][-1]] and letters[0]["reason"] == "invalid_json"
    assert sorted(p["prediction_id"] for p in shadow) == sorted(f"{c}/{NAME}@3" for c in r["coords_a"][:-1])
    assert {(p["model_version"], p["features"]) for p in predictions} == {("1", "customers@1")}
    ids = [p["event_id"] for p in predictions]
    np.testing.assert_allclose([p["score"] for p in predictions],
                               offline_scores(r["paths"][1], r["tables"]["customers@1"], r["events"], ids),
                               rtol=1e-5, atol=1e-6)
    shadow_ids = [p["event_id"] for p in shadow]
    np.testing.assert_allclose([p["score"] for p in shadow],
                               offline_scores(r["paths"][3], r["tables"]["customers@1"], r["events"], shadow_ids),
                               rtol=1e-5, atol=1e-6)
    reg = r["reg"]
    windows = reg.comparisons(NAME, ENV, 3, source="replay")
    assert windows and sum(w["compared"] for w in windows) == 300
    assert {(w["champion"], w["challenger"], w["scorer"], w["source"], w["replay"]["features"]) for w in windows} == \
        {(f"{NAME}@1", f"{NAME}@3", -1, "replay", "customers@1")}
    assert reg.comparisons(NAME, ENV, source="live") == []
    assert reg.comparison_evidence(NAME, ENV, 3)["windows"] == 0          # a gate counts live windows only
    assert main(["registry", "report", NAME, "--env", ENV, "--registry", reg.uri]) == 0
    report = capsys.readouterr().out
    assert "replay" in report and f"{NAME}@3" in report and "300" in report
    assert main(["registry", "report", NAME, "--env", ENV, "--registry", reg.uri, "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert [(t["challenger"], t["source"], t["compared"]) for t in totals] == [(f"{NAME}@3", "replay", 300)]
    # the same range again: the windows are already recorded, nothing counts twice
    assert main(replay_args(r, r["coords_a"], "3", r["tmp"] / "run-2" / "replay", rest=r["coords_b"])) == 0
    capsys.readouterr()
    assert sum(w["compared"] for w in reg.comparisons(NAME, ENV, 3, source="replay")) == 300


def test_replay_refuses_what_it_cannot_replay_faithfully(replayed, capsys):
    from jobs.cli import main

    r = replayed
    both = r["coords_a"] + r["coords_b"]
    assert main(replay_args(r, both, "3", r["tmp"] / "refused" / "replay")) == 1
    err = capsys.readouterr().err
    assert "changed within" in err and "promote to v2 with customers@2" in err
    assert main(replay_args(r, r["coords_a"], "1", r["tmp"] / "refused" / "replay", rest=r["coords_b"])) == 1
    assert "v1 was the champion" in capsys.readouterr().err
    assert main(replay_args(r, r["coords_b"], "3", r["tmp"] / "run-b" / "replay", rest=r["coords_a"])) == 0
    assert "champion then v2" in capsys.readouterr().out              # B: the later champion and snapshot
    shutil.rmtree(r["durable"]["customers@1"])                         # the snapshot's durable copy is gone
    assert main(replay_args(r, r["coords_a"], "3", r["tmp"] / "gone" / "replay", rest=r["coords_b"])) == 1
    err = capsys.readouterr().err
    assert "feature snapshot customers@1" in err and "no longer available" in err

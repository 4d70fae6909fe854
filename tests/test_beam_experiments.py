"""Shadows, a canary and routes in the Beam pipeline (issue #14), with real models (the demo's two
ONNX versions), a real shared-memory feature store and Beam's DirectRunner:

* a bounded run with a shadow and a canary: every input once in the served output or the dead
  letters, every served event once in the shadow output, the canary's entities exactly
  ``canary_mask``'s, scores the offline scores, and the comparison windows (event time) equal to
  what ``ExperimentScorer`` computes offline for the same input;
* routes: every event to exactly its route's model(s), ``no_route`` dead letters, in input order;
* configurations the pipeline cannot honour are refused, never ignored.

The same through Kafka, the registry and ``registry replay``: tests/test_beam_experiment_job.py."""
from __future__ import annotations

import math
import pickle
import shutil
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import apache_beam as beam
import numpy as np
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

from beam_helpers import onnx_variant
from connectors import dead_letter as dl
from connectors.events import DecoderSpec, EventSchema
from connectors.feature_store import load_table, open_store
from connectors.kafka.partition_reader import RecordChunk
from job_helpers import offline_scores
from jobs import demo_data
from model_formats import load_model
from model_formats.reloading import Candidate, ChallengerOffer, ChallengerPlan
from operators import steps
from operators.batch import MicroBatch
from operators.beam.pipeline import ScoreEvents
from operators.experiments import ExperimentScorer, Route, Condition, assign_routes, canary_mask

ENTITIES = 100_000              # the demo models' training set (cached after their first use)
T0 = 1_700_000_040_000          # a window boundary
WINDOW_MS = 1000
WINDOWS = 3
PER_WINDOW = 200                # good events per partition and window
PARTITIONS = 2
TOPIC = "beamexp-events"
SHARE = 0.3
LATENCY_FIELDS = ("champion_batch_ms_p50", "challenger_batch_ms_p50", "champion_batch_ms_p99",
                  "challenger_batch_ms_p99")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo features in an arrow-shm store, the demo models v1 (champion) and v2 (shadow),
    v2 again as version 4 (canary), and the input: per partition 3 event-time windows of good
    events with malformed ones and unknown entities mixed in, as raw record chunks."""
    folder = tmp_path_factory.mktemp("beamexp")
    features = demo_data.features_table(ENTITIES)
    store_dir = Path("/dev/shm") / f"streamscore-beamexp-{uuid.uuid4().hex[:10]}"
    store = f"arrow-shm://{store_dir}"
    load_table(store, features, key="entity_id")
    champion = demo_data.demo_model(ENTITIES)
    v2 = demo_data.demo_model(ENTITIES, version="2")
    canary = onnx_variant(v2, folder / "canary.onnx", version="4")
    chunks, events, reasons = [], {}, {}
    rng = np.random.default_rng(5)
    for partition in range(PARTITIONS):
        records: list[bytes] = []
        for w in range(WINDOWS):
            good = demo_data.events(PER_WINDOW, ENTITIES, seed=100 * partition + w, prefix=f"p{partition}w{w}")
            for i, event in enumerate(good):
                event["ts"] = T0 + w * WINDOW_MS + int(rng.integers(0, WINDOW_MS))
                events[event["id"]] = event
                records.append(orjson.dumps(event))
            records.insert(int(rng.integers(0, len(records))), b'{"id": "bad", ')
            unknown = {"id": f"unknown-{partition}-{w}", "entity_id": ENTITIES + 7 + w, "amount": 1.0,
                       "ts": T0 + w * WINDOW_MS + 5}
            records.insert(int(rng.integers(0, len(records))), orjson.dumps(unknown))
        for offset, record in enumerate(records):
            if record.startswith(b'{"id": "bad"'):
                reasons[f"{TOPIC}/{partition}/{offset}"] = dl.Reason.INVALID_JSON
            elif record.startswith(b'{"id":"unknown'):
                reasons[f"{TOPIC}/{partition}/{offset}"] = dl.Reason.UNKNOWN_ENTITY
        for start in range(0, len(records), 250):        # chunks span the windows: the pipeline cuts them
            part = records[start:start + 250]
            chunks.append(RecordChunk(TOPIC, partition, part, list(range(start, start + len(part)))))
    yield {"folder": folder, "features": features, "store": store, "champion": champion, "v2": v2,
           "canary": canary, "chunks": chunks, "events": events, "reasons": reasons,
           "inputs": {f"{c.topic}/{c.partition}/{o}" for c in chunks for o in c.offsets}}
    shutil.rmtree(store_dir, ignore_errors=True)


def gather(pcoll, path: Path, label: str) -> None:
    """Every element of a (possibly windowed) PCollection into one pickle file."""
    (pcoll | f"{label}Global" >> beam.WindowInto(window.GlobalWindows())
     | f"{label}Pickle" >> beam.Map(pickle.dumps) | f"{label}List" >> beam.combiners.ToList()
     | f"{label}Write" >> beam.Map(lambda items: path.write_bytes(pickle.dumps([pickle.loads(i) for i in items]))))


def run_score_events(world, out: Path, **score_options) -> dict[str, list]:
    """ScoreEvents over the world's chunks on the DirectRunner: its outputs, gathered."""
    out.mkdir(parents=True, exist_ok=True)
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        outputs = (p | beam.Create(world["chunks"], reshuffle=False)
                   | ScoreEvents(decoder=DecoderSpec(EventSchema()), store_uri=world["store"],
                                 model_path=str(world["champion"]), max_batch_events=500, **score_options))
        for name, pcoll in zip(("scored", "failed", "comparisons"), outputs):
            if pcoll is not None:
                gather(pcoll, out / f"{name}.pkl", name.title())
    return {name: pickle.loads((out / f"{name}.pkl").read_bytes()) if (out / f"{name}.pkl").exists() else None
            for name in ("scored", "failed", "comparisons")}


def plan_of(world) -> ChallengerPlan:
    return ChallengerPlan((ChallengerOffer("shadow", Candidate(world["v2"])),
                           ChallengerOffer("canary", Candidate(world["canary"]), SHARE)), salt="fraud/production")


def rows_of(batches: list) -> list[dict]:
    return [row for b in batches for row in b.to_pylist()]


def offline_comparisons(world, plan: ChallengerPlan) -> list[dict]:
    """The comparison windows ExperimentScorer computes outside Beam for the same input: each
    chunk decoded and enriched, its events cut at the event-time windows and scored window by
    window with the window's start as the clock."""
    schema = EventSchema()
    decoder = DecoderSpec(schema).build()
    store = open_store(world["store"])
    scorer = ExperimentScorer(schema, shadow_budget_ms=None, window_ms=WINDOW_MS)
    scorer.set_plan(plan)
    scorer.wait_loaded(120)
    champion = load_model(str(world["champion"]))
    by_window: dict[int, list[MicroBatch]] = defaultdict(list)
    try:
        for chunk in world["chunks"]:
            batch = steps.decode(decoder, chunk)
            features, found = store.lookup(steps.lookup_keys(batch, schema.key_field))
            batch = steps.join_features(batch, features, found)
            starts = batch.events.column("ts").to_numpy() // WINDOW_MS * WINDOW_MS
            for start in np.unique(starts):
                by_window[int(start)].append(MicroBatch(batch.topic, batch.partition,
                                                        batch.events.filter(starts == start), [],
                                                        features=batch.features))
        summaries = []
        for start in sorted(by_window):
            for part in by_window[start]:
                summaries += scorer.score(part, champion, now_ms=start).experiment.comparisons
        return summaries + scorer.windows.close_due(math.inf)
    finally:
        scorer.close()
        champion.close()
        store.close()


def comparable(summary: dict) -> tuple[tuple, dict]:
    key = (summary["role"], summary["champion"], summary["challenger"], summary["window_start_ms"])
    return key, {k: v for k, v in summary.items() if k not in LATENCY_FIELDS + ("scorer",)}


@pytest.fixture(scope="module")
def experiment_run(world, tmp_path_factory):
    plan = plan_of(world)
    out = run_score_events(world, tmp_path_factory.mktemp("experiment-run"), challengers=plan,
                           comparison_window_s=WINDOW_MS / 1000, bounded=True)
    return {**out, "plan": plan}


def test_bounded_beam_run_serves_every_input_once_and_shadows_every_served_event(world, experiment_run):
    scored, failed = experiment_run["scored"], experiment_run["failed"]
    assert failed == []                                  # no batch failed in RunInference
    served = rows_of([s.predictions for s in scored])
    letters = [d for s in scored for d in s.dead_letters]
    served_ids = [p["prediction_id"] for p in served]
    letter_ids = [d.source for d in letters]
    assert len(served_ids) == len(set(served_ids)) and len(letter_ids) == len(set(letter_ids))
    assert set(served_ids) | set(letter_ids) == world["inputs"] and not set(served_ids) & set(letter_ids)
    assert {d.source: d.reason for d in letters} == world["reasons"]
    assert Counter(world["reasons"].values()) == Counter({dl.Reason.INVALID_JSON: PARTITIONS * WINDOWS,
                                                          dl.Reason.UNKNOWN_ENTITY: PARTITIONS * WINDOWS})
    # the canary serves exactly canary_mask's entities, the champion the rest
    entities = np.array([p["entity_id"] for p in served])
    by_canary = canary_mask(entities, "fraud/production", SHARE)
    assert 0 < by_canary.sum() < len(served)
    assert [(p["model_version"], p["role"]) for p in served] == \
        [("4", "canary") if c else ("1", "champion") for c in by_canary]
    # every served event once in the shadow output, by v2, never in the served output
    shadow = rows_of([b for s in scored if s.experiment for b in s.experiment.shadow_predictions])
    assert sorted(p["prediction_id"] for p in shadow) == sorted(f"{i}/demo-fraud-gbm@2" for i in served_ids)
    assert {(p["model_version"], p["role"]) for p in shadow} == {("2", "shadow")}
    # scores: the offline scores of the model that served (or shadowed) each event
    v1 = offline_scores(world["champion"], world["features"], world["events"], [p["event_id"] for p in served])
    v2 = offline_scores(world["v2"], world["features"], world["events"], [p["event_id"] for p in served])
    np.testing.assert_allclose([p["score"] for p in served], np.where(by_canary, v2, v1), rtol=1e-5, atol=1e-6)
    v2_shadow = offline_scores(world["v2"], world["features"], world["events"], [p["event_id"] for p in shadow])
    np.testing.assert_allclose([p["score"] for p in shadow], v2_shadow, rtol=1e-5, atol=1e-6)


def test_bounded_beam_comparison_windows_equal_the_offline_experiment_scorer(world, experiment_run):
    beam_windows = dict(map(comparable, experiment_run["comparisons"]))
    offline = dict(map(comparable, offline_comparisons(world, experiment_run["plan"])))
    starts = [T0 + w * WINDOW_MS for w in range(WINDOWS)]
    assert sorted(beam_windows) == sorted(offline) == sorted(
        (role, "demo-fraud-gbm@1", f"demo-fraud-gbm@{v}", s) for role, v in (("shadow", 2), ("canary", 4))
        for s in starts)
    floats = ("score_diff_mean", "score_diff_p50", "score_diff_p99", "psi")   # summed in another order
    for key, summary in offline.items():
        got = beam_windows[key]
        assert {k: v for k, v in got.items() if k not in floats} == {k: v for k, v in summary.items()
                                                                     if k not in floats}, key
        assert [got[k] for k in floats] == pytest.approx([summary[k] for k in floats], rel=1e-9, abs=1e-12), key
    shadow_compared = sum(s["compared"] for k, s in beam_windows.items() if k[0] == "shadow")
    assert shadow_compared == PARTITIONS * WINDOWS * PER_WINDOW       # every good event compared once
    assert 0 < min(s["agreement"] for s in beam_windows.values()) < 1  # v2 is another model: some flips


def routes_of(world) -> tuple[Route, ...]:
    """Small amounts to v1, ids of one partition's second window to v1 and v2 voting, large
    amounts to v2; the rest matches no route (no default): ``no_route``."""
    v1, v2 = str(world["champion"]), str(world["v2"])
    return (Route("small", (v1,), (Condition("amount", "range", [None, 10.0]),)),
            Route("web", (v1, v2), (Condition("id", "regex", "^p1w1-"),), "vote"),
            Route("large", (v2,), (Condition("amount", "range", [60.0, None]),)))


def test_beam_routes_send_every_event_to_exactly_its_routes_models(world, tmp_path):
    from jobs.config import RoutePlan

    routes = routes_of(world)
    out = run_score_events(world, tmp_path, routes=RoutePlan(routes))
    assert out["failed"] == [] and out["comparisons"] is None
    scored = out["scored"]
    served = rows_of([s.predictions for s in scored])
    letters = {d.source: d.reason for s in scored for d in s.dead_letters}
    assert not {p["prediction_id"] for p in served} & set(letters)
    assert {p["prediction_id"] for p in served} | set(letters) == world["inputs"]
    good = [world["events"][p["event_id"]] for p in served]
    import pyarrow as pa
    expected_route = assign_routes(pa.RecordBatch.from_pylist(
        [{"id": e["id"], "amount": e["amount"]} for e in good]), routes)
    models = {"small": ("demo-fraud-gbm", "1"), "web": ("demo-fraud-gbm+demo-fraud-gbm", "1+2"),
              "large": ("demo-fraud-gbm", "2")}
    assert [(p["model"], p["model_version"]) for p in served] == \
        [models[routes[i].name] for i in expected_route]
    unrouted = {k for k, r in letters.items() if r == dl.Reason.NO_ROUTE}
    all_good = [e for e in world["events"].values()]
    none_match = assign_routes(pa.RecordBatch.from_pylist([{"id": e["id"], "amount": e["amount"]} for e in all_good]),
                               routes) == -1
    assert len(unrouted) == int(none_match.sum()) > 0
    assert {k: r for k, r in letters.items() if r != dl.Reason.NO_ROUTE} == world["reasons"]
    # each served event in input order per batch, scored by its route's model(s)
    v1 = offline_scores(world["champion"], world["features"], world["events"], [p["event_id"] for p in served])
    v2 = offline_scores(world["v2"], world["features"], world["events"], [p["event_id"] for p in served])
    names = [routes[i].name for i in expected_route]
    want = [a if n == "small" else b if n == "large" else float(np.mean([a >= 0.5, b >= 0.5]))
            for n, a, b in zip(names, v1, v2)]
    np.testing.assert_allclose([p["score"] for p in served], want, rtol=1e-5, atol=1e-6)
    for s in scored:
        offsets = [int(p.rsplit("/", 1)[1]) for p in s.predictions.column("prediction_id").to_pylist()] \
            if s.predictions.num_rows else []
        assert offsets == sorted(offsets)


def test_the_beam_job_refuses_what_it_cannot_honour(world, tmp_path):
    from jobs.beam_score import build
    from jobs.config import RoutePlan, load_config

    with pytest.raises(ValueError, match="routes load their models once"):
        ScoreEvents(decoder=DecoderSpec(EventSchema()), store_uri=world["store"], model_path="unused",
                    routes=RoutePlan(routes_of(world)), watch_model_pattern="models/*.onnx")
    with pytest.raises(ValueError, match="routes cannot be combined with shadows"):
        ScoreEvents(decoder=DecoderSpec(EventSchema()), store_uri=world["store"], model_path="unused",
                    routes=RoutePlan(routes_of(world)), challengers=plan_of(world))
    with pytest.raises(ValueError, match="must be a multiple of the event-time window"):
        ScoreEvents(decoder=DecoderSpec(EventSchema()), store_uri=world["store"], model_path="unused",
                    challengers=plan_of(world), bounded=True, comparison_window_s=1.5, event_time_window_s=1)
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text("routes: [{name: small, when: {field: amount, max: 5}, model: a.onnx}]\n")
    with pytest.raises(ValueError, match="--watch-model, --registry-schedule"):
        build(beam.Pipeline(), load_config(cfg_path), watch_model_pattern="models/*.onnx")


def test_replay_takes_the_champion_and_snapshot_live_at_the_range_and_refuses_a_change_within(world, tmp_path):
    """``jobs.replay.live_then`` on a real (SQLite) registry: the champion and pinned snapshot of a
    time range from the audit log; refused before the first promotion and across a change."""
    import time as clock

    from jobs.replay import ReplayRefused, live_then
    from registry import Environment, open_registry, write_dataset

    who = dict(actor="tester")
    with open_registry(f"sqlite:///{tmp_path / 'registry.db'}", cache_dir=tmp_path / "cache") as reg:
        reg.init(environments=[Environment("production", 0)])
        for i in (1, 2):
            reg.register_snapshot("customers", write_dataset(world["features"].slice(0, 100), str(tmp_path / f"d{i}"),
                                                             "customers"), key_column="entity_id", reason="s", **who)
        for path in (world["champion"], world["v2"]):
            reg.register_model("fraud", str(path), reason="m", **who)
        before_ms = int(clock.time() * 1000) - 1000
        reg.promote("fraud", 1, "production", features="customers@1", reason="start", **who)
        clock.sleep(0.01)
        first_ms = int(clock.time() * 1000)
        clock.sleep(0.01)
        reg.promote("fraud", 1, "production", features="customers@2", reason="new features", **who)
        clock.sleep(0.01)
        second_ms = int(clock.time() * 1000)
        then = live_then(reg, "fraud", "production", first_ms, first_ms)
        assert (then.to_version, then.features) == (1, "customers@1")
        now = live_then(reg, "fraud", "production", second_ms, second_ms + 1)
        assert (now.to_version, now.features) == (1, "customers@2")
        with pytest.raises(ReplayRefused, match="changed within .*customers@2.*separately"):
            live_then(reg, "fraud", "production", first_ms, second_ms)
        with pytest.raises(ReplayRefused, match="no champion of fraud in production"):
            live_then(reg, "fraud", "production", before_ms, first_ms)

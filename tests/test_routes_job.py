"""The real Flink job with routes (issue #14, routes): two routes on the numeric ``amount`` field and
a default that combines two models. Every input once in the main output or the dead letters; each
prediction's model is its route's model and its score that model's offline score (the default
route's: the mean of both models' offline scores); the per-route metrics count exactly the events
each route received. With a shadow and a canary, they run on the route serving the champion only."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from jobs import demo_data
from jobs.config import DefaultRouteSettings, RouteCondition, RouteSettings
from job_helpers import decode_events, offline_scores, probe_until, produce_and_account

pytestmark = pytest.mark.slow

SMALL_BELOW, LARGE_FROM = 15.0, 60.0


def route_of(amount: float) -> str:
    return "small" if amount < SMALL_BELOW else "large" if amount >= LARGE_FROM else "rest"


def test_routes_send_every_event_to_exactly_its_models(stack, tmp_path):
    v1 = Path(stack.model_path)
    v2 = demo_data.demo_model(stack.entities, version="2")        # other trees: other scores
    cfg = stack.job_config(f"routes-{time.time_ns() % 10**9}", partitions=2)
    cfg.routes = [RouteSettings(name="small", when=RouteCondition(field="amount", max=SMALL_BELOW), model=str(v1)),
                  RouteSettings(name="large", when=RouteCondition(field="amount", min=LARGE_FROM), model=str(v2))]
    cfg.default_route = DefaultRouteSettings(name="rest", models=[str(v1), str(v2)], combine="mean")
    cfg.model.path = "models/not-served.onnx"           # with routes, model.path is not loaded
    cfg.flink.conf["metrics.fetcher.update-interval"] = 1000
    job, reader = stack.start_job(cfg)
    try:
        records, reasons = demo_data.with_bad_events(demo_data.events(2000, stack.entities, seed=78, prefix="r"),
                                                     stack.entities, every=97)
        coords, tally, predicted = produce_and_account(cfg, job, reader, records, reasons)
        assert len(predicted) + len(reasons) == len(coords)          # every input exactly once
        rows = [tally.predictions[c] for c in predicted]
        events = decode_events(records)
        routes = [route_of(events[p["event_id"]]["amount"]) for p in rows]
        assert set(routes) == {"small", "large", "rest"}
        name = demo_data.DEMO_MODEL_NAME
        want_model = {"small": (name, "1"), "large": (name, "2"), "rest": (f"{name}+{name}", "1+2")}
        assert [(p["model"], p["model_version"]) for p in rows] == [want_model[r] for r in routes]
        assert {p["role"] for p in rows} == {"champion"}
        assert [p["prediction_id"] for p in rows] == predicted
        ids = [p["event_id"] for p in rows]
        s1 = offline_scores(v1, stack.features, events, ids)
        s2 = offline_scores(v2, stack.features, events, ids)
        want = np.select([np.array(routes) == "small", np.array(routes) == "large"], [s1, s2], (s1 + s2) / 2)
        np.testing.assert_allclose([p["score"] for p in rows], want, rtol=1e-5, atol=1e-6)
        # per-route metrics: the warm-up events and ours, each counted once on its route
        warmup = demo_data.events(20, stack.entities, seed=99, prefix="warmup")
        expected: dict[str, float] = {}
        for amount in [e["amount"] for e in warmup] + [events[i]["amount"] for i in ids]:
            expected[route_of(amount)] = expected.get(route_of(amount), 0.0) + 1
        pattern = re.compile(r"\.route_(small|large|rest)_events$")
        deadline, seen = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            seen = job.rest().operator_totals(pattern)
            if seen == expected:
                break
            time.sleep(1)
        assert seen == expected
    finally:
        reader.stop()
        job.stop()


def test_shadow_and_canary_run_on_the_route_serving_the_champion(stack, tmp_path):
    """Routes with a shadow and a canary (issue #14): the route naming ``model.path`` is served by
    the champion with its challengers, the other route by its own model. The canary serves exactly
    ``canary_mask``'s entities among the champion route's events and none of the other route's; the
    shadow scores exactly the champion route's events, to the shadow topic and the file sink's
    ``shadow/`` dataset, never to the main output; every input once in the output or the dead letters."""
    from beam_helpers import onnx_variant
    from connectors.kafka.clients import ensure_topics
    from jobs.config import CanarySettings
    from job_helpers import read_committed
    from operators.experiments import canary_mask
    from test_experiment_job import TopicReader

    v1 = Path(stack.model_path)
    v2 = demo_data.demo_model(stack.entities, version="2")
    shadow = onnx_variant(v1, tmp_path / "shadow.onnx", version="3")
    canary = onnx_variant(v1, tmp_path / "canary.onnx", version="4")
    out = tmp_path / "out"
    cfg = stack.job_config(f"routes-x-{time.time_ns() % 10**9}", partitions=2, sink__kind="both",
                           sink__path=out.as_uri(), sink__roll_interval_s=2.0)
    cfg.routes = [RouteSettings(name="small", when=RouteCondition(field="amount", max=SMALL_BELOW), model=str(v1))]
    cfg.default_route = DefaultRouteSettings(name="rest", model=str(v2))
    cfg.model.shadows = [str(shadow)]
    cfg.model.canary = CanarySettings(path=str(canary), share=0.5)
    cfg.model.shadow_budget_ms = 60_000
    k = cfg.kafka
    ensure_topics(k.bootstrap_servers, {k.shadow_topic_name(): 2, k.comparison_topic_name(): 1})
    topics = TopicReader(k.bootstrap_servers, [k.shadow_topic_name()])
    job, reader = stack.start_job(cfg)
    try:
        probe_until(cfg, stack.entities, lambda: bool(topics.get(k.shadow_topic_name())) and
                    any(p["role"] == "canary" for p in reader.snapshot().predictions.values()),
                    "the shadow or the canary never scored", events=20, seed=5)
        records, reasons = demo_data.with_bad_events(demo_data.events(2000, stack.entities, seed=79, prefix="x"),
                                                     stack.entities, every=97)
        coords, tally, predicted = produce_and_account(cfg, job, reader, records, reasons)
        rows = [tally.predictions[c] for c in predicted]
        events = decode_events(records)
        small = np.array([events[p["event_id"]]["amount"] < SMALL_BELOW for p in rows])
        assert 0 < small.sum() < len(rows)
        entities = np.array([p["entity_id"] for p in rows])
        by_canary = small & canary_mask(entities, cfg.job_name, 0.5)
        assert [p["model_version"] for p in rows] == np.where(by_canary, "4", np.where(small, "1", "2")).tolist()
        assert [p["role"] for p in rows] == np.where(by_canary, "canary", "champion").tolist()
        name = demo_data.DEMO_MODEL_NAME
        wanted = {f"{c}/{name}@3" for c, is_small in zip(predicted, small) if is_small}
        expected = set(coords)

        def shadow_ids() -> list[str]:
            return [p["prediction_id"] for p in topics.get(k.shadow_topic_name())]
        deadline = time.monotonic() + 120
        while not (wanted <= set(shadow_ids()) and wanted <= set(read_committed(out / "shadow", "prediction_id"))
                   and expected <= set(read_committed(out / "predictions", "prediction_id")) |
                   set(read_committed(out / "dead_letters", "source"))):
            job.check_alive()
            assert time.monotonic() < deadline, "shadow predictions or files missing"
            time.sleep(0.5)
        job.stop()
        assert sorted(i for i in shadow_ids() if i.rsplit("/", 1)[0] in expected) == sorted(wanted)
        in_files = read_committed(out / "shadow", "prediction_id")
        assert sorted(i for i in in_files if i.rsplit("/", 1)[0] in expected) == sorted(wanted)
        served = read_committed(out / "predictions", "prediction_id")
        assert sorted(i for i in served if i in expected) == sorted(predicted)
        assert sorted(i for i in read_committed(out / "dead_letters", "source") if i in expected) == \
            sorted(expected - set(predicted))
        assert set(read_committed(out / "predictions", "role")) == {"champion", "canary"}
    finally:
        reader.stop()
        job.stop()
        topics.stop()

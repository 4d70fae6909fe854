"""The real Flink job with routes (issue #14, routes): two routes on the numeric ``amount`` field and
a default that combines two models. Every input once in the main output or the dead letters; each
prediction's model is its route's model and its score that model's offline score (the default
route's: the mean of both models' offline scores); the per-route metrics count exactly the events
each route received."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from jobs import demo_data
from jobs.config import DefaultRouteSettings, RouteCondition, RouteSettings
from job_helpers import decode_events, offline_scores, produce_and_account

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

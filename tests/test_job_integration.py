"""The scoring job end to end in a Flink MiniCluster: 20k events in, every one accounted for,
scores equal to offline scoring, bad input dead-lettered with the right reason."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from jobs import demo_data
from jobs.producer import produce
from job_helpers import offline_scores

pytestmark = pytest.mark.slow

N_GOOD = 20_000
BAD_PER_KIND = 40


@pytest.fixture(scope="module")
def job_run(stack):
    cfg = stack.job_config("integration", partitions=2)
    job, reader = stack.start_job(cfg)
    try:
        good = demo_data.events(N_GOOD, stack.entities, seed=21)
        records: list = list(good)
        reasons: list[str | None] = [None] * len(records)
        rng = np.random.default_rng(5)
        for kind, (_, reason) in demo_data.BAD_KINDS.items():
            for j in range(BAD_PER_KIND):
                pos = int(rng.integers(0, len(records)))
                records.insert(pos, demo_data.bad_event(kind, j, stack.entities))
                reasons.insert(pos, reason)
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records, encode=demo_data.encode)
        tally = reader.wait_for(set(coords), timeout_s=600, stall_s=180, check=job.check_alive)
        expected_reason = {i: r for i, r in enumerate(reasons) if r is not None}
        yield {"cfg": cfg, "records": records, "coords": coords, "tally": tally, "good": good,
               "expected_reason": expected_reason, "job": job}
    finally:
        reader.stop()
        job.stop()


def test_every_event_is_predicted_or_dead_lettered(job_run):
    tally, coords = job_run["tally"], job_run["coords"]
    inputs = set(coords)
    missing = tally.missing(inputs)
    assert not missing, f"{len(missing)} inputs neither predicted nor dead-lettered, e.g. {sorted(missing)[:5]}"
    extra = (set(tally.predictions) | set(tally.dead_letters)) - inputs
    assert all(tally.predictions[k]["event_id"].startswith("warmup-") for k in extra), "outputs for no input"
    assert not set(tally.predictions) & set(tally.dead_letters)
    assert len(set(tally.predictions) & inputs) == N_GOOD
    assert len(set(tally.dead_letters) & inputs) == BAD_PER_KIND * len(demo_data.BAD_KINDS)
    # the prediction for each input coordinate is about the event produced there
    for i, coord in enumerate(coords):
        rec = job_run["records"][i]
        if isinstance(rec, dict):
            assert tally.predictions[coord]["event_id"] == rec["id"]
    print(f"\nduplicates: {tally.duplicate_predictions} predictions, {tally.duplicate_dead_letters} dead letters")


def test_scores_equal_offline_scoring(job_run, stack):
    tally = job_run["tally"]
    by_id = {e["id"]: e for e in job_run["good"]}
    predictions = [p for p in tally.predictions.values() if p["event_id"] in by_id]
    assert len(predictions) == N_GOOD
    ids = [p["event_id"] for p in predictions]
    expected = offline_scores(stack.model_path, stack.features, by_id, ids)
    got = np.array([p["score"] for p in predictions])
    assert np.abs(got - expected).max() <= 1e-6
    assert {p["model"] for p in predictions} == {demo_data.DEMO_MODEL_NAME}
    assert {p["model_version"] for p in predictions} == {demo_data.DEMO_MODEL_VERSION}
    assert {p["role"] for p in predictions} == {"champion"}
    [features] = {p["features"] for p in predictions}         # one snapshot served the whole run
    assert re.fullmatch(r"[\w.-]+@\d+", features), features
    assert all(p["label"] in (0, 1) for p in predictions)
    assert all(p["scored_ts"] >= p["event_ts"] for p in predictions)


def test_bad_input_lands_in_dlq_with_the_right_reason(job_run):
    tally, coords = job_run["tally"], job_run["coords"]
    expected = job_run["expected_reason"]
    assert len(expected) == BAD_PER_KIND * len(demo_data.BAD_KINDS)
    wrong = {coords[i]: (reason, tally.dead_letters.get(coords[i])) for i, reason in expected.items()
             if tally.dead_letters.get(coords[i]) != reason}
    assert not wrong, f"wrong or missing dead-letter reasons: {list(wrong.items())[:5]}"
    assert Counter(tally.dead_letters.values()) == Counter({r: BAD_PER_KIND for _, r in demo_data.BAD_KINDS.values()})

"""Chaos scenarios in short form (``make chaos`` runs them at full size): the job is broken on
purpose with real processes, and every input must come out as a prediction or a dead letter."""
from __future__ import annotations

import pytest

import scenarios
from jobs.embedded import EmbeddedStack

pytestmark = pytest.mark.slow

EVENTS = 20_000


def _assert_accounted(outcome: scenarios.Outcome) -> None:
    print(f"\n{outcome.scenario}: {outcome.to_dict()}")
    assert outcome.inputs == EVENTS
    assert outcome.lost == 0, f"{outcome.lost} inputs lost: {outcome}"
    assert outcome.predicted + outcome.dead_lettered == outcome.inputs
    # every input's output is one the product promises for it (scenarios.expected_outcomes): the
    # malformed input keeps its own reason; only a lookup that outlived its retries may turn a
    # valid or unknown-entity event into feature_store_unavailable
    assert outcome.wrong_reasons == 0, outcome.notes
    assert outcome.damaged_dead_letters == 0, outcome.notes


def test_kill_job_three_times(stack):
    outcome = scenarios.kill_job(stack, events=EVENTS, kills=3, rate=1000, seed=1)
    _assert_accounted(outcome)
    assert len(outcome.notes) == 3
    assert outcome.dead_lettered == EVENTS // 100, f"only the bad input may be dead-lettered: {outcome.notes}"


def test_broker_outage_with_durable_storage(tmp_path, broker_kind, request):
    if broker_kind == "kafka":    # Apache Kafka keeps its log on disk: the session's broker will do
        outcome = scenarios.broker_outage(request.getfixturevalue("stack"), events=EVENTS, outage_s=10, rate=1000)
    else:
        with EmbeddedStack(tmp_path, say=lambda *_: None, durable_broker=True) as durable:
            outcome = scenarios.broker_outage(durable, events=EVENTS, outage_s=10, rate=1000)
    _assert_accounted(outcome)
    assert outcome.dead_lettered == EVENTS // 100, outcome.notes


def test_kill_python_worker(stack):
    outcome = scenarios.kill_python_worker(stack, events=EVENTS, rate=1000)
    _assert_accounted(outcome)
    assert outcome.failovers >= 1, "Flink did not notice the killed worker"
    assert outcome.dead_lettered == EVENTS // 100, outcome.notes


def test_plasma_store_restart(tmp_path, broker_kind):
    with EmbeddedStack(tmp_path, say=lambda *_: None, broker=broker_kind) as own:   # it kills its store
        outcome = scenarios.plasma_restart(own, events=EVENTS, rate=1000)
    _assert_accounted(outcome)
    assert outcome.dead_lettered == EVENTS // 100, f"lookups during the outage must wait and retry: {outcome.notes}"


def test_slow_feature_store_retries_instead_of_dropping(stack):
    from feature_store_fixtures import REDIS_URL, redis_uri
    redis_uri("probe")                       # skips with the reason when Redis is not there
    outcome = scenarios.slow_store(stack, REDIS_URL, events=EVENTS, rate=1000)
    _assert_accounted(outcome)

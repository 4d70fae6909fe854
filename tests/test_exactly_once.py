"""Exactly-once to Kafka (``kafka.delivery: exactly_once``): Flink's transactional KafkaSink fed
by the Python operators, on Apache Kafka (``kafka_stack``: the embedded Tansu's transactions do not
isolate). The Python worker is killed mid-stream; a ``read_committed`` reader must then see every
input exactly once, as a prediction or as an intact dead letter."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "chaos"))
import scenarios  # noqa: E402

pytestmark = pytest.mark.slow

EVENTS = 10_000


def test_kill_python_worker_exactly_once_no_loss_no_duplicates(kafka_stack):
    outcome = scenarios.kill_python_worker(kafka_stack, events=EVENTS, rate=1000, delivery="exactly_once")
    print(f"\n{outcome.to_dict()}")
    assert outcome.failovers >= 1, "Flink did not notice the killed worker: nothing was replayed"
    assert outcome.inputs == EVENTS
    assert outcome.lost == 0, outcome
    assert outcome.duplicates == 0, f"{outcome.duplicates} inputs written twice under exactly_once: {outcome}"
    assert outcome.predicted + outcome.dead_lettered == EVENTS
    assert outcome.dead_lettered == EVENTS // 100, "only the bad input may be dead-lettered"
    assert outcome.wrong_reasons == 0, outcome.notes
    assert outcome.damaged_dead_letters == 0, outcome.notes

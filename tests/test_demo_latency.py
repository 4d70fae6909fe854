"""The demo's latency line covers steady state only: events created in the warm-up are left out
(no stack: a hand-made tally)."""
from __future__ import annotations

from jobs.demo import latency_line, steady_state_latency
from jobs.tally import Tally

STARTED = 1_000.0    # epoch seconds when production began


def _tally(events: list[tuple[float, float]]) -> Tally:
    """Predictions ``in/0/i`` with (creation ms after STARTED, latency ms)."""
    return Tally(predictions={f"in/0/{i}": {"event_ts": STARTED * 1000 + at, "_arrived_ms": STARTED * 1000 + at + lat}
                              for i, (at, lat) in enumerate(events)})


def test_events_created_in_the_warm_up_are_left_out():
    # 100 slow events in the first 2 s, 100 fast ones after: only the fast ones count
    tally = _tally([(i * 10.0, 5_000.0) for i in range(100)] + [(2_000.0 + i * 10, 20.0) for i in range(100)])
    inputs = set(tally.predictions)
    stats = steady_state_latency(tally, inputs, STARTED, warmup_s=2.0)
    assert stats == {"p50_ms": 20.0, "p99_ms": 20.0, "latency_warmup_s": 2.0, "latency_events": 100}
    summary = {**stats, "predictions_out": 200}
    assert "after the first 2 s; 100 of 200 predictions" in latency_line(summary)
    assert "p99 20.0 ms" in latency_line(summary)


def test_only_the_given_inputs_count():
    tally = _tally([(3_000.0, 10.0), (3_000.0, 90.0)])
    stats = steady_state_latency(tally, {"in/0/0"}, STARTED, warmup_s=2.0)
    assert stats["latency_events"] == 1 and stats["p99_ms"] == 10.0


def test_a_run_shorter_than_the_warm_up_is_measured_over_all_events_and_says_so():
    tally = _tally([(100.0, 30.0), (200.0, 50.0)])
    stats = steady_state_latency(tally, set(tally.predictions), STARTED, warmup_s=2.0)
    assert stats["latency_warmup_s"] == 0.0 and stats["latency_events"] == 2
    assert "all events" in latency_line({**stats, "predictions_out": 2})


def test_no_predictions():
    stats = steady_state_latency(Tally(), set(), STARTED)
    assert stats["p50_ms"] is None and stats["latency_events"] == 0
    assert latency_line({**stats, "predictions_out": 0}) == "latency: no predictions"

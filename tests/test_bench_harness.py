"""The benchmark harness and the competitor runners, against the real embedded stack:
the producer's warm-up, the output reader in both modes, and every e2e runner doing the same
work as the job (each prediction equal to offline scoring of the same event)."""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # bench/ is not an installed package

from bench import competitors  # noqa: E402
from bench.e2e import RUNNERS, latency_stats, p99_by_slice, slowest_windows  # noqa: E402
from connectors.dead_letter import DeadLetter  # noqa: E402
from connectors.kafka.clients import consumer_config, ensure_topics, producer_config  # noqa: E402
from connectors.kafka.partition_reader import PartitionReader  # noqa: E402
from connectors.kafka.writer import KafkaBatchWriter  # noqa: E402
from jobs import demo_data  # noqa: E402
from jobs.producer import produce  # noqa: E402
from jobs.tally import OutputReader  # noqa: E402
from job_helpers import offline_scores  # noqa: E402


def _topics(stack) -> tuple[str, str, str]:
    name = f"harness-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.broker.bootstrap_servers, {name: 2, f"{name}-out": 2, f"{name}-dlq": 1})
    return name, f"{name}-out", f"{name}-dlq"


def test_warm_up_records_are_acknowledged_first_and_not_returned(stack):
    bootstrap = stack.broker.bootstrap_servers
    topic, _, _ = _topics(stack)
    coords = produce(bootstrap, topic, [b"a", b"b", b"c"], rate=1000, warm_up=[b"w1", b"w2"])
    stored: dict[str, bytes] = {}
    for partition in (0, 1):
        reader = PartitionReader(consumer_config(bootstrap, "harness"), topic, partition)
        for _ in range(50):
            chunk = reader.read(None, 100, 0.1)
            stored.update({f"{topic}/{partition}/{o}": v for o, v in zip(chunk.offsets, chunk.values)})
        reader.close()
    assert len(stored) == 5
    assert [stored[c] for c in coords] == [b"a", b"b", b"c"]
    warm = {c for c in stored if c not in coords}
    assert sorted(stored[c] for c in warm) == [b"w1", b"w2"]
    # acknowledged before the first record was sent: on each partition, after every warm-up
    for c in coords:
        partition, offset = c.rsplit("/", 2)[1:]
        assert all(int(offset) > int(w.rsplit("/", 1)[1]) for w in warm if w.rsplit("/", 2)[1] == partition)


@pytest.mark.parametrize("isolated", [False, True], ids=["thread", "child-process"])
def test_output_reader_accounts_and_stamps_arrivals(stack, isolated):
    bootstrap = stack.broker.bootstrap_servers
    _, out, dlq = _topics(stack)
    reader = OutputReader(bootstrap, out, dlq, {"fetch.wait.max.ms": 1}, isolated=isolated).start()
    try:
        writer = KafkaBatchWriter(producer_config(bootstrap), out, dlq)
        before = time.time() * 1000
        ids = [f"in/0/{i}" for i in range(50)]
        writer.write([orjson.dumps({"prediction_id": k, "event_ts": before}) for k in ids])
        writer.write([orjson.dumps({"prediction_id": ids[0], "event_ts": before})],      # a duplicate
                     dead_letters=[DeadLetter(b"x", "invalid_json", "d", "in", 1, 7)])
        tally = reader.wait_for(set(ids) | {"in/1/7"}, timeout_s=60, stall_s=60)
    finally:
        reader.stop()
    assert not tally.missing(set(ids) | {"in/1/7"})
    assert tally.dead_letters == {"in/1/7": "invalid_json"}
    assert tally.duplicate_predictions == 1 and tally.duplicate_ids == {ids[0]}
    after = time.time() * 1000
    for p in tally.predictions.values():
        assert before - 1 <= p["_produced_ms"] <= p["_arrived_ms"] <= after
    lat = tally.latencies_ms(set(ids))
    assert len(lat) == 50 and (lat >= 0).all()


def test_latency_stats_per_hop():
    from jobs.tally import Tally

    t = Tally(predictions={f"k{i}": {"event_ts": 1000.0, "scored_ts": 1000.0 + i, "_arrived_ms": 1000.0 + 2 * i}
                           for i in range(101)})
    stats = latency_stats(t, [f"k{i}" for i in range(101)] + ["never-arrived"])
    assert stats["p50_ms"] == 100 and stats["max_ms"] == 200
    assert stats["hops"]["event→scored"]["p50_ms"] == 50
    assert stats["hops"]["scored→read"]["max_ms"] == 100


def test_slowest_windows_find_a_stall_and_p99_by_slice_shows_the_warm_up():
    from jobs.tally import Tally

    event_ts = np.arange(0, 2000, 2.0)                 # 1,000 events over 2 s
    latency = np.full(len(event_ts), 10.0)
    latency[(event_ts >= 1200) & (event_ts < 1300)] = 400.0 - (event_ts[(event_ts >= 1200) & (event_ts < 1300)] - 1200)
    slow = slowest_windows(event_ts, latency, window_ms=100, top=2)
    assert slow["windows"] == 20 and slow["windows_above_50ms"] == 1
    assert slow["top"][0] == {"at_s": 1.2, "max_ms": 400.0, "p50_ms": 351.0, "events": 50}
    assert slow["top"][1]["max_ms"] == 10.0 and len(slow["max_ms_by_window"]) == 20

    keys = [f"k{i}" for i in range(300)]
    t = Tally(predictions={k: {"event_ts": 0.0, "_arrived_ms": 500.0 if i < 100 else 20.0}
                           for i, k in enumerate(keys[:250])})   # the last 50 never arrived
    assert p99_by_slice(t, keys, 100) == [500.0, 20.0, 20.0]


def test_echo_copies_coordinates_and_creation_time_without_scoring():
    from bench.echo import echo_records
    from connectors.kafka.partition_reader import RecordChunk

    chunk = RecordChunk("in", 1, [orjson.dumps({"id": "e-1", "ts": 123, "amount": 1.0}), b"not json", None], [7, 8, 9])
    values, dead = echo_records(chunk)
    assert [orjson.loads(v)["prediction_id"] for v in values] == ["in/1/7"]
    first = orjson.loads(values[0])
    assert first["event_id"] == "e-1" and first["event_ts"] == 123 and first["scored_ts"] >= 123
    assert [(d.source, d.reason) for d in dead] == [("in/1/8", "invalid_json"), ("in/1/9", "invalid_json")]


def run_runner(stack, name: str, seed: int, n: int = 300):
    """Start bench runner ``name`` on fresh topics, produce ``n`` demo events and read its output
    until every input is accounted for (or it stalls): (events, input coordinates, tally)."""
    cfg = stack.job_config(f"runner-{name}-{uuid.uuid4().hex[:6]}", partitions=2)
    job, reader = stack.start_job(cfg, module=RUNNERS[name].module)
    try:
        events = demo_data.events(n, stack.entities, seed=seed)
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, events, encode=demo_data.encode)
        return events, coords, reader.wait_for(set(coords), timeout_s=300, stall_s=120, check=job.check_alive)
    finally:
        reader.stop()
        job.stop()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in RUNNERS if RUNNERS[n].module != "jobs.score_stream"   # the job: its own tests
                                  and RUNNERS[n].scores])
def test_runner_scores_like_the_model_offline(stack, name):
    runner = RUNNERS[name]
    if runner.bench_venv and not competitors.venv_ready():
        pytest.skip(f"{competitors.VENV} is missing: run `{competitors.SETUP}`")
    events, coords, tally = run_runner(stack, name, seed=41)
    assert not tally.missing(set(coords))
    by_id = {e["id"]: e for e in events}
    predictions = [tally.predictions[c] for c in coords]
    assert [p["event_id"] for p in predictions] == [e["id"] for e in events]
    expected = offline_scores(stack.model_path, stack.features, by_id, [e["id"] for e in events])
    np.testing.assert_allclose([p["score"] for p in predictions], expected, rtol=1e-5, atol=1e-6)
    assert {p["model"] for p in predictions} == {demo_data.DEMO_MODEL_NAME}
    assert all(p["event_ts"] <= p["scored_ts"] for p in predictions)


@pytest.mark.slow
def test_echo_runner_copies_every_input_through_the_loops_plumbing(stack):
    """bench.echo runs bench.plain_loop's polling and writer with no work: every input comes out
    once, named by its coordinates, with its event's id and creation time."""
    events, coords, tally = run_runner(stack, "echo", seed=42)
    assert not tally.missing(set(coords))
    assert [tally.predictions[c]["event_id"] for c in coords] == [e["id"] for e in events]
    assert tally.duplicate_predictions == 0 and not tally.dead_letters

"""The Beam scoring job end to end on the DirectRunner, with the real broker, Plasma store and
model: the same scores as the Flink job for the same events, dead letters for bad events, a
model swap mid-stream through RunInference's side input, RunInference's own dead-letter output,
and file output."""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from beam_helpers import onnx_variant, read_outputs, run_bounded, stop_offsets
from connectors import dead_letter as dl
from connectors.kafka.clients import consumer_config, partitions_of
from connectors.kafka.partition_reader import committed_offsets
from jobs import demo_data
from jobs.beam_score import main as beam_main
from jobs.producer import produce
from job_helpers import offline_scores
from operators.beam.pipeline import model_schedule

pytestmark = pytest.mark.slow

N_GOOD = 3000
BAD_PER_KIND = 10


def mixed_records(entities: int, seed: int) -> tuple[list, list[dict], dict[int, str]]:
    """Good events with every kind of bad one mixed in: (records, good events, position → reason)."""
    good = demo_data.events(N_GOOD, entities, seed=seed)
    tagged: list[tuple] = [(e, None) for e in good]
    rng = np.random.default_rng(seed)
    for kind, (_, reason) in demo_data.BAD_KINDS.items():
        for j in range(BAD_PER_KIND):
            tagged.insert(int(rng.integers(0, len(tagged))), (demo_data.bad_event(kind, j, entities), reason))
    return [r for r, _ in tagged], good, {i: reason for i, (_, reason) in enumerate(tagged) if reason}


@pytest.fixture(scope="module")
def flink_and_beam(stack):
    """The Flink job and the streaming Beam job (``python -m jobs.beam_score``, unbounded read)
    consume the same input topic; each writes to its own output topics. Then the Beam job is
    killed (SIGKILL), more events arrive while it is down, and it is started again."""
    flink_cfg = stack.job_config(f"beam-vs-flink-{uuid.uuid4().hex[:6]}", partitions=2)
    beam_cfg = stack.job_config(f"{flink_cfg.job_name.removeprefix('streamscore-')}-beam", partitions=2)
    beam_cfg.kafka.input_topic = flink_cfg.kafka.input_topic
    jobs, readers = {}, {}
    try:
        with ThreadPoolExecutor(2) as pool:   # both warm up at the same time
            started = {name: pool.submit(stack.start_job, cfg, module=module) for name, cfg, module in
                       (("flink", flink_cfg, "jobs.score_stream"), ("beam", beam_cfg, "jobs.beam_score"))}
        for name, future in started.items():
            if future.exception() is None:
                jobs[name], readers[name] = future.result()
        for future in started.values():
            if future.exception() is not None:
                raise future.exception()
        records, good, reasons = mixed_records(stack.entities, seed=23)
        coords = produce(flink_cfg.kafka.bootstrap_servers, flink_cfg.kafka.input_topic, records,
                         encode=demo_data.encode)
        tallies = {name: readers[name].wait_for(set(coords), timeout_s=300, stall_s=120, check=jobs[name].check_alive)
                   for name in jobs}
        _wait_for_commits(beam_cfg, stop_offsets(coords))   # commits follow the outputs asynchronously
        jobs["beam"].kill()
        readers.pop("beam").stop()
        while_down = produce(flink_cfg.kafka.bootstrap_servers, flink_cfg.kafka.input_topic,
                             demo_data.events(500, stack.entities, seed=24, prefix="down"), encode=demo_data.encode)
        jobs["beam"], readers["beam"] = stack.start_job(beam_cfg, module="jobs.beam_score")
        after_restart = readers["beam"].wait_for(set(coords + while_down), timeout_s=300, stall_s=120,
                                                 check=jobs["beam"].check_alive)
        yield {"coords": coords, "records": records, "good": good, "reasons": reasons, "flink": tallies["flink"],
               "beam": tallies["beam"], "while_down": while_down, "after_restart": after_restart}
    finally:
        for reader in readers.values():
            reader.stop()
        for job in jobs.values():
            job.stop()


def _wait_for_commits(cfg, wanted: dict[int, int], timeout_s: float = 60) -> None:
    """Until the Beam job's consumer group has committed at least ``wanted`` (partition → offset)."""
    config = consumer_config(cfg.kafka.bootstrap_servers, cfg.kafka.group_id, cfg.kafka.consumer)
    deadline = time.monotonic() + timeout_s
    while True:
        committed = committed_offsets(config, cfg.kafka.input_topic, list(wanted))
        if all(committed.get(p, -1) >= o for p, o in wanted.items()):
            return
        assert time.monotonic() < deadline, f"offsets {wanted} not committed after {timeout_s}s: {committed}"
        time.sleep(0.2)


def test_streaming_beam_job_accounts_for_every_event(flink_and_beam):
    coords, beam = flink_and_beam["coords"], flink_and_beam["beam"]
    inputs = set(coords)
    assert not beam.missing(inputs)
    assert not set(beam.predictions) & set(beam.dead_letters)
    assert len(set(beam.predictions) & inputs) == N_GOOD
    for i, coord in enumerate(coords):
        record = flink_and_beam["records"][i]
        if isinstance(record, dict):
            assert beam.predictions[coord]["event_id"] == record["id"]
        else:
            assert beam.dead_letters[coord] == flink_and_beam["reasons"][i]
    assert Counter(beam.dead_letters[c] for c in coords if c in beam.dead_letters) == \
        Counter({r: BAD_PER_KIND for _, r in demo_data.BAD_KINDS.values()})


def test_beam_scores_equal_the_flink_jobs_scores(flink_and_beam, stack):
    coords, flink, beam = flink_and_beam["coords"], flink_and_beam["flink"], flink_and_beam["beam"]
    predicted = [c for c in coords if c in flink.predictions]
    assert len(predicted) == N_GOOD and set(predicted) == {c for c in coords if c in beam.predictions}
    for field in ("event_id", "entity_id", "score", "label", "model", "model_version", "features", "role", "event_ts"):
        assert [beam.predictions[c][field] for c in predicted] == [flink.predictions[c][field] for c in predicted], field
    assert {c: beam.dead_letters[c] for c in coords if c in beam.dead_letters} == \
        {c: flink.dead_letters[c] for c in coords if c in flink.dead_letters}
    by_id = {e["id"]: e for e in flink_and_beam["good"]}
    ids = [beam.predictions[c]["event_id"] for c in predicted]
    expected = offline_scores(stack.model_path, stack.features, by_id, ids)
    assert np.abs(np.array([beam.predictions[c]["score"] for c in predicted]) - expected).max() <= 1e-6


def test_restarted_beam_job_resumes_from_the_offsets_its_bundles_committed(flink_and_beam):
    """Offsets are committed to the consumer group once a bundle's outputs are written: after a
    SIGKILL the job scores what arrived while it was down and nothing it had already written."""
    tally, coords, down = flink_and_beam["after_restart"], flink_and_beam["coords"], flink_and_beam["while_down"]
    assert not tally.missing(set(coords + down))
    assert {tally.predictions[c]["event_id"] for c in down} == {f"down-{i}" for i in range(500)}
    assert tally.duplicate_predictions == 0 and tally.duplicate_dead_letters == 0


def test_model_swap_mid_stream_changes_the_version_without_dropping_events(stack, tmp_path):
    """RunInference's model-update side input, as the DirectRunner runs it: a model schedule in
    event time (one ModelMetadata per window). Events of the first minute are scored by version
    1, the events after the swap by version 2; none is lost or scored twice."""
    cfg = stack.job_config(f"beam-swap-{uuid.uuid4().hex[:6]}", partitions=2)
    v2 = onnx_variant(stack.model_path, tmp_path / "demo-v2.onnx", version="2")
    t0 = 1_700_000_040_000                       # a window boundary (60 s windows)
    before = demo_data.events(800, stack.entities, seed=31, prefix="before")
    after = demo_data.events(800, stack.entities, seed=32, prefix="after")

    def stamped(ts):
        return lambda event: json.dumps({**event, "ts": ts}).encode()

    coords = (produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, before, encode=stamped(t0 + 5_000))
              + produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, after, encode=stamped(t0 + 65_000)))
    run_bounded(cfg, coords, event_time_window_s=60,
                model_updates=lambda p: model_schedule(p, {t0 / 1000: str(stack.model_path), t0 / 1000 + 60: str(v2)},
                                                       window_s=60, until_s=t0 / 1000 + 120))
    tally = read_outputs(cfg, coords)
    assert not tally.missing(set(coords)) and not tally.dead_letters and tally.duplicate_predictions == 0
    versions = Counter((tally.predictions[c]["event_id"].split("-")[0], tally.predictions[c]["model_version"])
                       for c in coords)
    assert versions == Counter({("before", "1"): 800, ("after", "2"): 800})
    by_id = {e["id"]: e for e in before + after}
    ids = [tally.predictions[c]["event_id"] for c in coords]
    expected = offline_scores(stack.model_path, stack.features, by_id, ids)   # v2 has v1's trees
    assert np.abs(np.array([tally.predictions[c]["score"] for c in coords]) - expected).max() <= 1e-6


def test_runtime_failure_dead_letters_the_batch_through_runinference(stack, tmp_path):
    """A model that onnxruntime can only run on batches of exactly 1000 rows (more than the topic
    holds): every micro-batch fails, goes to RunInference's dead-letter output and out as
    ``scoring_error``, with the batch's earlier dead letters; the pipeline carries on."""
    cfg = stack.job_config(f"beam-fail-{uuid.uuid4().hex[:6]}", partitions=1)
    cfg.model.path = str(onnx_variant(stack.model_path, tmp_path / "fixed-batch.onnx", fixed_batch=1000))
    records = demo_data.events(400, stack.entities, seed=33) + [b"{not json"]
    coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records, encode=demo_data.encode)
    run_bounded(cfg, coords)
    tally = read_outputs(cfg, coords)
    assert not tally.missing(set(coords)) and not tally.predictions
    assert Counter(tally.dead_letters.values()) == Counter({dl.Reason.SCORING_ERROR: 400, dl.Reason.INVALID_JSON: 1})


def test_unreachable_feature_store_dead_letters_events_after_the_retries(stack):
    cfg = stack.job_config(f"beam-nostore-{uuid.uuid4().hex[:6]}", partitions=2)
    cfg.features.store = f"arrow-shm:///dev/shm/streamscore-absent-{uuid.uuid4().hex[:8]}"
    cfg.features.retries, cfg.features.retry_backoff_ms = 1, 10
    records = demo_data.events(300, stack.entities, seed=35) + [b"{not json"]
    coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records, encode=demo_data.encode)
    run_bounded(cfg, coords)
    tally = read_outputs(cfg, coords)
    assert not tally.missing(set(coords)) and not tally.predictions
    assert Counter(tally.dead_letters.values()) == Counter({dl.Reason.FEATURE_STORE_UNAVAILABLE: 300, dl.Reason.INVALID_JSON: 1})


def test_bounded_run_writes_json_lines_files(stack, tmp_path):
    cfg = stack.job_config(f"beam-files-{uuid.uuid4().hex[:6]}", partitions=2)
    records, good, reasons = mixed_records(stack.entities, seed=37)
    coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records[:600], encode=demo_data.encode)
    partitions = partitions_of(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic)
    stops = ",".join(f"{p}={o}" for p, o in sorted(stop_offsets(coords, partitions).items()))
    config = cfg.to_yaml(tmp_path / "job.yaml")
    assert beam_main(["--config", str(config), "--stop-offsets", stops, "--output-files", str(tmp_path / "run")]) == 0
    predictions = [json.loads(line) for f in tmp_path.glob("run-predictions*.jsonl") for line in f.read_text().splitlines()]
    letters = [json.loads(line) for f in tmp_path.glob("run-dead-letters*.jsonl") for line in f.read_text().splitlines()]
    expected_letters = {coords[i]: r for i, r in reasons.items() if i < 600}
    assert {d["source"]: d["reason"] for d in letters} == expected_letters
    assert sorted(p["prediction_id"] for p in predictions) == sorted(set(coords) - set(expected_letters))


def test_watching_a_model_pattern_is_refused_on_the_direct_runner(stack, tmp_path):
    config = stack.job_config(f"beam-watch-{uuid.uuid4().hex[:6]}").to_yaml(tmp_path / "job.yaml")
    with pytest.raises(SystemExit, match="DirectRunner"):
        beam_main(["--config", str(config), "--watch-model", str(tmp_path / "*.onnx")])

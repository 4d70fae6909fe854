"""Both engines fed the same poison input report the same numbers.

The poison: a model that onnxruntime runs only on batches of exactly 1000 rows (more than the
topic holds), so every micro-batch fails at run time and each of its events is dead-lettered
``scoring_error``. Neither engine may count those rows as ``model_input_rejected`` (the schema
refused nothing): the Flink job once did. Counters compared: ``model_input_rejected``,
``scoring_errors`` (the scoring step) and ``dead_letters.<reason>`` (the sinks).
"""
from __future__ import annotations

import re
import time
import uuid
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_helpers import onnx_variant, read_outputs, stop_offsets
from connectors import dead_letter as dl
from connectors.embedded.tansu import free_port
from jobs import demo_data
from jobs.flink_rest import FlinkRest
from jobs.producer import produce
from jobs.tally import OutputReader

GOOD, UNKNOWN = 300, 20
COUNTERS = ("model_input_rejected", "scoring_errors", f"dead_letters.{dl.Reason.SCORING_ERROR}",
            f"dead_letters.{dl.Reason.UNKNOWN_ENTITY}", f"dead_letters.{dl.Reason.INVALID_JSON}")
EXPECTED = {"model_input_rejected": 0, "scoring_errors": GOOD, f"dead_letters.{dl.Reason.SCORING_ERROR}": GOOD,
            f"dead_letters.{dl.Reason.UNKNOWN_ENTITY}": UNKNOWN, f"dead_letters.{dl.Reason.INVALID_JSON}": 1}


def poison_records(entities: int) -> list:
    good = demo_data.events(GOOD, entities, seed=41)
    unknown = [demo_data.bad_event("unknown_entity", i, entities) for i in range(UNKNOWN)]
    return good + unknown + [b"{not json"]


def beam_counters(result) -> dict[str, int]:
    out = {}
    for name in COUNTERS:
        namespace, _, short = name.rpartition(".")
        query = MetricsFilter().with_name(short)
        found = [c for c in result.metrics().query(query)["counters"]
                 if not namespace or c.key.metric.namespace.endswith(namespace)]
        out[name] = sum(c.committed for c in found)
    return out


def flink_counters(rest: FlinkRest) -> dict[str, int]:
    pattern = re.compile(r"\.(" + "|".join(re.escape(n) for n in COUNTERS) + r")$")
    jobs = rest.running_jobs()
    totals = dict.fromkeys(COUNTERS, 0)
    for metrics in rest.vertex_metrics(jobs[0]["jid"], lambda m: bool(pattern.search(m))).values():
        for metric_id, value in metrics.items():
            totals[pattern.search(metric_id).group(1)] += int(value)
    return totals


@pytest.fixture
def poison_model(stack, tmp_path):
    return str(onnx_variant(stack.model_path, tmp_path / "fixed-batch.onnx", fixed_batch=1000))


def test_beam_counts_a_failed_batch_as_scoring_errors_only(stack, poison_model):
    from jobs.beam_score import build

    cfg = stack.job_config(f"agree-beam-{uuid.uuid4().hex[:6]}", partitions=1)
    cfg.model.path = poison_model
    coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, poison_records(stack.entities),
                     encode=demo_data.encode)
    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    build(p, cfg, stop_offsets=stop_offsets(coords))
    result = p.run()
    result.wait_until_finish()
    tally = read_outputs(cfg, coords)
    assert not tally.missing(set(coords)) and not tally.predictions
    assert Counter(tally.dead_letters.values()) == Counter(
        {dl.Reason.SCORING_ERROR: GOOD, dl.Reason.UNKNOWN_ENTITY: UNKNOWN, dl.Reason.INVALID_JSON: 1})
    assert beam_counters(result) == EXPECTED


@pytest.mark.slow
def test_flink_counts_a_failed_batch_as_scoring_errors_only(stack, poison_model):
    rest_port = free_port()
    cfg = stack.job_config(f"agree-flink-{uuid.uuid4().hex[:6]}", partitions=1,
                           flink__conf={"rest.port": rest_port, "rest.address": "127.0.0.1",
                                        "rest.bind-address": "127.0.0.1",
                                        "metrics.fetcher.update-interval": 1000})
    cfg.model.path = poison_model
    job = stack.job(cfg).start()          # no warm-up: this model scores nothing
    reader = OutputReader(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, cfg.kafka.dead_letter_topic,
                          cfg.kafka.consumer).start()
    try:
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, poison_records(stack.entities),
                         encode=demo_data.encode)
        tally = reader.wait_for(set(coords), timeout_s=600, stall_s=600, check=job.check_alive)  # JVM start on a busy machine
        assert not tally.missing(set(coords)) and not tally.predictions
        assert Counter(tally.dead_letters.values()) == Counter(
            {dl.Reason.SCORING_ERROR: GOOD, dl.Reason.UNKNOWN_ENTITY: UNKNOWN, dl.Reason.INVALID_JSON: 1})
        rest = FlinkRest(f"http://127.0.0.1:{rest_port}")
        deadline, seen = time.monotonic() + 60, {}
        while time.monotonic() < deadline:     # metrics reach REST at bundle ends + fetch interval
            try:
                seen = flink_counters(rest)
            except OSError as exc:             # the REST API answers slowly on a busy machine
                seen = {"rest_error": str(exc)}
                time.sleep(1)
                continue
            if seen == EXPECTED or seen["scoring_errors"] >= GOOD and seen[f"dead_letters.{dl.Reason.SCORING_ERROR}"] >= GOOD:
                break
            time.sleep(1)
        assert seen == EXPECTED, f"awaited the Flink job's counters {EXPECTED}, saw {seen}"
    finally:
        reader.stop()
        job.stop()

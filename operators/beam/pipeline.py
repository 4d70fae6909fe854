"""The scoring pipeline as Beam transforms: raw Kafka record chunks → decode → enrichment
(stock ``RequestResponseIO``, Enrichment's engine) → stock ``RunInference`` → scored
micro-batches (predictions + dead letters).

Every step is a micro-batch step from ``operators.steps``; the stock transforms batch
micro-batches further (their ``batch_elements_kwargs`` count events). Nothing is flattened on
the way, so an unbounded read stays one fused stage on the DirectRunner.
"""
from __future__ import annotations

import base64
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelMetadata, RunInference
from apache_beam.transforms import window

from connectors.events import DecoderSpec
from connectors.kafka.partition_reader import RecordChunk
from operators import steps
from operators.batch import MicroBatch
from operators.steps import MissingEntityPolicy
from operators.beam.common import METRICS_NAMESPACE
from connectors.retry import RetryPolicy
from operators.beam.enrichment import EnrichMicroBatches
from operators.beam.inference import (ExperimentModelHandler, MicroBatchModelHandler, RouteModelHandler,
                                      failed_batch_dead_letters)
from operators.experiments import summarize_pairs
from operators.beam.kafka_io import WriteComparisonsToKafkaFn, WriteToKafkaFn


class DecodeEvents(beam.DoFn):
    """RecordChunk → MicroBatch of valid events, carrying dead letters for the rest."""

    def __init__(self, decoder: DecoderSpec) -> None:
        self.decoder = decoder

    def setup(self) -> None:
        self._decoder = self.decoder.build()
        self._rejected = Metrics.counter(METRICS_NAMESPACE, "records_undecodable")

    def process(self, chunk: RecordChunk) -> Iterable[MicroBatch]:
        batch = steps.decode(self._decoder, chunk)
        self._rejected.inc(len(batch.dead_letters))
        yield batch


class SplitByEventTime(beam.DoFn):
    """Cuts micro-batches at fixed event-time window boundaries and stamps each part with its
    window start, so a windowed side input (e.g. a model schedule) applies per window. Dead
    letters travel with the first part."""

    def __init__(self, timestamp_field: str, window_s: float) -> None:
        self.timestamp_field = timestamp_field
        self.window_ms = int(window_s * 1000)

    def process(self, batch: MicroBatch) -> Iterable[window.TimestampedValue]:
        if batch.events.num_rows == 0:
            yield window.TimestampedValue(batch, 0)     # dead letters only: any window will do
            return
        starts = batch.events.column(self.timestamp_field).to_numpy() // self.window_ms * self.window_ms
        letters = batch.dead_letters
        for start in np.unique(starts):
            part = MicroBatch(batch.topic, batch.partition, batch.events.filter(starts == start), letters,
                              batch.polled_at_ms)
            letters = []
            yield window.TimestampedValue(part, int(start) / 1000)


class ScoreEvents(beam.PTransform):
    """RecordChunks → (scored: ScoredBatch, failed: MicroBatch of scoring_error dead letters,
    comparisons: comparison window summaries, or None without challengers).

    ``model_updates``: a PCollection of ``ModelMetadata`` for RunInference's model-update side
    input (a GlobalWindows stream on a streaming runner, or event-time windows together with
    ``event_time_window_s``); ``watch_model_pattern``: RunInference's own ``WatchFilePattern``.

    ``challengers`` (a ``ChallengerPlan`` with shadows and/or a canary): scored beside the champion
    (:class:`~operators.beam.inference.ExperimentModelHandler`, which says why in one
    RunInference); shadow predictions ride on each ScoredBatch's ``experiment``. Comparison
    windows: on an unbounded read, processing-time windows closed by the scorer, as in the Flink
    job; on a bounded read (``bounded``: a replay or backfill, where processing time means
    nothing), event-time windows of ``comparison_window_s``: micro-batches are cut at the window
    boundaries and each window's batches are grouped (GroupByKey) and summarized by the same
    ``ComparisonWindows`` code (``operators.experiments.summarize_pairs``), and every shadow
    scores every batch (no budget: nothing is live).

    ``routes`` (a ``jobs.config.RoutePlan``): each event scored by its route's model(s) instead
    (:class:`~operators.beam.inference.RouteModelHandler`); ``model_path`` is then not loaded.
    """

    def __init__(self, *, decoder: DecoderSpec, store_uri: str, model_path: str,
                 retry: RetryPolicy = RetryPolicy(), missing: MissingEntityPolicy = MissingEntityPolicy(),
                 intra_op_threads: int = 1, max_batch_events: int = 4000, load_options: dict | None = None,
                 model_updates: beam.PCollection | None = None, watch_model_pattern: str | None = None,
                 watch_interval_s: float = 10, event_time_window_s: float | None = None,
                 challengers: Any = None, shadow_budget_ms: float = 200.0, comparison_window_s: float = 10.0,
                 bounded: bool = False, routes: Any = None) -> None:
        super().__init__()
        self.decoder = decoder
        # a fixed batch size: Beam batches what a bundle holds, up to max_batch_events events
        batching = {"min_batch_size": max_batch_events, "max_batch_size": max_batch_events}
        self.enrichment = EnrichMicroBatches(store_uri, decoder.schema.key_field, retry=retry, missing=missing,
                                             **batching)
        handler_options = dict(schema=decoder.schema, intra_op_threads=intra_op_threads, **batching,
                               **(load_options or {}))
        self.experiments = bool(challengers is not None and challengers.challengers)
        self.bounded = bounded
        self.comparison_window_ms = int(comparison_window_s * 1000)
        if routes is not None:
            if self.experiments:
                raise ValueError("routes cannot be combined with shadows or a canary yet")
            if model_updates is not None or watch_model_pattern:
                raise ValueError("routes load their models once: a model update (--watch-model, "
                                 "--registry-schedule) cannot say which route it is for")
            self.model_handler = RouteModelHandler(routes, **handler_options)
        elif self.experiments:
            self.model_handler = ExperimentModelHandler(
                model_path, challengers=challengers, shadow_budget_ms=None if bounded else shadow_budget_ms,
                comparison_window_ms=self.comparison_window_ms, emit_pairs=bounded, **handler_options)
        else:
            self.model_handler = MicroBatchModelHandler(model_path, **handler_options)
        if self.experiments and bounded:
            if event_time_window_s and self.comparison_window_ms % int(event_time_window_s * 1000):
                raise ValueError(f"comparison window {comparison_window_s} s must be a multiple of the event-time "
                                 f"window {event_time_window_s} s (the registry schedule's), so that no micro-batch "
                                 "spans two comparison windows")
            event_time_window_s = event_time_window_s or comparison_window_s
        self.model_updates = model_updates
        self.watch_model_pattern = watch_model_pattern
        self.watch_interval_s = watch_interval_s
        self.event_time_window_s = event_time_window_s

    def expand(self, chunks):
        batches = chunks | "Decode" >> beam.ParDo(DecodeEvents(self.decoder))
        if self.event_time_window_s:
            batches = (batches
                       | "SplitByEventTime" >> beam.ParDo(SplitByEventTime(self.decoder.schema.timestamp_field,
                                                                           self.event_time_window_s))
                       | "EventTimeWindows" >> beam.WindowInto(window.FixedWindows(self.event_time_window_s)))
        enriched = batches | "Enrichment" >> self.enrichment
        inference: dict[str, Any] = {"model_metadata_pcoll": self.model_updates}
        if self.watch_model_pattern:
            inference.update(watch_model_pattern=self.watch_model_pattern, interval=self.watch_interval_s)
        results, failures = (enriched
                             | "RunInference" >> RunInference(self.model_handler, **inference)
                             .with_exception_handling())
        scored = results | "Scored" >> beam.Map(lambda result: result.inference)
        failed = failures.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_dead_letters)
        comparisons = None
        if self.experiments and self.bounded:
            comparisons = (scored
                           | "ComparisonPairs" >> beam.ParDo(KeyPairsByWindow(self.comparison_window_ms))
                           | "ComparisonWindows" >> beam.GroupByKey()
                           | "Compare" >> beam.FlatMapTuple(
                               lambda key, pairs, window_ms=self.comparison_window_ms:
                               summarize_pairs(list(pairs), key[3], window_ms)))
        elif self.experiments:
            comparisons = scored | "Comparisons" >> beam.FlatMap(
                lambda s: s.experiment.comparisons if s.experiment is not None else [])
        return scored, failed, comparisons


class KeyPairsByWindow(beam.DoFn):
    """Each batch's champion/challenger pairs keyed by (role, champion, challenger, start of the
    event-time comparison window of ``window_ms`` the batch lies in)."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = int(window_ms)

    def process(self, scored: steps.ScoredBatch, w=beam.DoFn.WindowParam):
        if scored.experiment is None or not scored.experiment.pairs:
            return
        start_ms = int(w.start.micros // 1000) // self.window_ms * self.window_ms
        for pair in scored.experiment.pairs:
            yield (*pair.key, start_ms), pair


def model_schedule(pipeline: beam.Pipeline, schedule: dict[float, str], window_s: float,
                   until_s: float) -> beam.PCollection:
    """A bounded event-time model schedule for RunInference's side input: ``{start_s: model
    path}`` → one ModelMetadata per ``window_s`` window, each from its start until the next
    start (the last until ``until_s``). Replays and backfills are then scored with the model
    that was live at each event's time (window starts must align with the schedule)."""
    starts = sorted(schedule) + [until_s]
    elements = [(float(t), ModelMetadata(model_id=schedule[start], model_name=schedule[start]))
                for start, end in zip(starts, starts[1:]) for t in np.arange(start, end, window_s)]
    return (pipeline
            | "ModelSchedule" >> beam.Create(elements)
            | "ModelScheduleTimes" >> beam.MapTuple(lambda t, metadata: window.TimestampedValue(metadata, t))
            | "ModelScheduleWindows" >> beam.WindowInto(window.FixedWindows(window_s)))


def prediction_lines(scored: steps.ScoredBatch) -> list[str]:
    """JSON lines of a batch's predictions (the records the Kafka sink writes)."""
    return [v.decode() for v in steps.prediction_records(scored)[0]]


def dead_letter_lines(item: steps.ScoredBatch | MicroBatch) -> list[str]:
    """JSON lines of a batch's dead letters: source, reason, detail, original bytes (base64)."""
    return [orjson.dumps({"source": d.source, "reason": d.reason, "detail": d.detail,
                          "value_base64": base64.b64encode(d.value).decode() if d.value is not None else None}).decode()
            for d in item.dead_letters]


def shadow_lines(scored: steps.ScoredBatch) -> list[str]:
    """JSON lines of a batch's shadow predictions (the records the shadow topic gets)."""
    if scored.experiment is None:
        return []
    return [v.decode() for v in scored.experiment.shadow_records()[0]]


def comparison_line(summary: dict) -> str:
    """One comparison window as the JSON line the comparison topic gets."""
    return steps.ExperimentOutput(comparisons=[summary]).comparison_records()[0][0].decode()


class WriteScoredToFiles(beam.PTransform):
    """Predictions and dead letters as JSON-lines files ``{prefix}-predictions*.jsonl`` and
    ``{prefix}-dead-letters*.jsonl`` (bounded reads only: files are finalised at the end); with
    challengers also ``{prefix}-shadow*.jsonl`` (shadow predictions) and
    ``{prefix}-comparisons*.jsonl`` (one comparison window per line)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def expand(self, outputs):
        scored, failed, comparisons = (*outputs, None)[:3]
        everywhere = window.GlobalWindows()       # files hold every window's records
        scored = scored | "FilesWindow" >> beam.WindowInto(everywhere)
        failed = failed | "FailedFilesWindow" >> beam.WindowInto(everywhere)
        letters = ((scored, failed) | "AllDeadLetters" >> beam.Flatten()
                   | "DeadLetterLines" >> beam.FlatMap(dead_letter_lines))
        predictions = scored | "PredictionLines" >> beam.FlatMap(prediction_lines)
        written = {
            "predictions": predictions | "WritePredictions" >> beam.io.WriteToText(
                f"{self.prefix}-predictions", file_name_suffix=".jsonl"),
            "dead_letters": letters | "WriteDeadLetters" >> beam.io.WriteToText(
                f"{self.prefix}-dead-letters", file_name_suffix=".jsonl"),
        }
        if comparisons is not None:
            written["shadow"] = (scored | "ShadowLines" >> beam.FlatMap(shadow_lines)
                                 | "WriteShadow" >> beam.io.WriteToText(f"{self.prefix}-shadow",
                                                                        file_name_suffix=".jsonl"))
            written["comparisons"] = (comparisons | "ComparisonsFilesWindow" >> beam.WindowInto(everywhere)
                                      | "ComparisonLines" >> beam.Map(comparison_line)
                                      | "WriteComparisons" >> beam.io.WriteToText(
                                          f"{self.prefix}-comparisons", file_name_suffix=".jsonl"))
        return written


class WriteScoredToKafka(beam.PTransform):
    """Both outputs of ScoreEvents to Kafka (predictions topic + dead-letter topic), each batch
    acknowledged before its bundle can commit. Two writers rather than a Flatten, which would
    hold an unbounded read's output back on the DirectRunner. With challengers, shadow predictions
    go to ``shadow_topic`` with the batch, and comparison windows to ``comparison_topic`` (both
    best effort, as in the Flink job: a missing topic drops them, logged and counted)."""

    def __init__(self, producer_config: dict[str, Any], topic: str, dead_letter_topic: str,
                 shadow_topic: str | None = None, comparison_topic: str | None = None) -> None:
        super().__init__()
        self.fn = WriteToKafkaFn(producer_config, topic, dead_letter_topic, shadow_topic=shadow_topic)
        self.comparisons_fn = WriteComparisonsToKafkaFn(producer_config, comparison_topic) \
            if comparison_topic else None

    def expand(self, outputs):
        scored, failed, comparisons = (*outputs, None)[:3]
        written = (scored | "WriteScored" >> beam.ParDo(self.fn),
                   failed | "WriteFailed" >> beam.ParDo(self.fn))
        if comparisons is not None and self.comparisons_fn is not None:
            written += (comparisons | "WriteComparisons" >> beam.ParDo(self.comparisons_fn),)
        return written


class RecordComparisons(beam.DoFn):
    """Each comparison window into the registry (``Registry.record_comparison``; a window already
    recorded is left as it is). ``tag``: fields added to every summary before it is recorded
    (a replay's ``source``, ``scorer`` and what was replayed)."""

    def __init__(self, registry: str, name: str, env: str, tag: dict | None = None) -> None:
        self.registry, self.name, self.env = registry, name, env
        self.tag = dict(tag or {})

    def setup(self) -> None:
        from registry import open_registry

        self._reg = open_registry(self.registry)
        self._recorded = Metrics.counter(METRICS_NAMESPACE, "comparisons_recorded")

    def process(self, summary: dict):
        summary = {**summary, **self.tag}
        if self._reg.record_comparison(self.name, self.env, summary, role=summary["role"]):
            self._recorded.inc()
        yield summary

    def teardown(self) -> None:
        reg = getattr(self, "_reg", None)
        if reg is not None:
            reg.close()

"""The scoring job on Apache Beam: Kafka → Enrichment (feature store) → RunInference → Kafka
(or JSON-lines files), configured by the same job YAML as the Flink job.

    python -m jobs.beam_score --config job.yaml                      # DirectRunner, until killed
    python -m jobs.beam_score --config job.yaml --stop-offsets 0=5000,1=5000 --output-files out/run1
    python -m jobs.beam_score --config job.yaml -- --runner FlinkRunner --flink_master host:8081 \\
        --flink_job_server_jar beam-runners-flink-1.19-job-server-2.61.0.jar --environment_type LOOPBACK --streaming

Everything after ``--`` is a Beam pipeline option. The DirectRunner runs here as is; the
portable runners need their job server on the user's side (see README, "Beam"). A streaming
run commits each finished bundle's offsets to ``kafka.group_id`` and a new run starts there
(at-least-once across restarts; the runner's own checkpoints take precedence where it has them).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from connectors.kafka.clients import consumer_config, partitions_of, producer_config
from connectors.kafka.partition_reader import committed_offsets
from jobs.beam_cmd import add_arguments
from jobs.config import JobConfig, load_config
from operators.beam.kafka_io import ReadFromKafkaPartitions, partition_reads
from operators.beam.pipeline import ScoreEvents, WriteScoredToFiles, WriteScoredToKafka

log = logging.getLogger("streamscore.beam")

DIRECT_RUNNERS = {"direct", "switchingdirect", "fnapi", "bundlebaseddirect"}   # Beam accepts any case, "Runner" optional
IDLE_POLL_MS = 10   # least wait of a poll that finds nothing: the read is re-run at once after it


def build(p: beam.Pipeline, cfg: JobConfig, *, start_offsets: dict[int, int] | None = None,
          stop_offsets: dict[int, int] | None = None, output_files: str | None = None,
          model_updates: beam.PCollection | None = None, watch_model_pattern: str | None = None,
          watch_interval_s: float = 10, event_time_window_s: float | None = None,
          registry_schedule_s: float | None = None, registry_schedule_until_s: float = 3600,
          challengers: Any = None, record_comparisons: dict | None = None):
    """Wire the pipeline onto ``p``. With ``stop_offsets`` (every partition) the read is bounded.

    ``model.registry`` in the config: the deployment's champion scores (fetched, sha256 checked,
    predictions name its registered name and version), and its shadows and canary as they are
    when the pipeline is built (not followed afterwards), their comparison windows recorded in
    the registry. ``registry_schedule_s``: instead, every event is scored by the version that was
    champion in its event-time window of that length (the registry's history as RunInference's
    model-update side input; the last change holds for ``registry_schedule_until_s`` more): what
    the DirectRunner can do with a bounded read.

    ``model.shadows`` / ``model.canary``: scored beside the champion (see ``ScoreEvents``), shadow
    predictions to ``kafka.shadow_topic`` (files: ``PREFIX-shadow*.jsonl``), comparison windows to
    ``kafka.comparison_topic`` (files: ``PREFIX-comparisons*.jsonl``). ``routes``: each event to its
    route's model(s). ``challengers``: a ``ChallengerPlan`` instead of the config's (replays);
    ``record_comparisons``: ``{registry, name, env, tag}`` to record the windows there instead of
    the followed deployment (replays tag theirs)."""
    k, f, m = cfg.kafka, cfg.features, cfg.model
    if cfg.routes and (watch_model_pattern or registry_schedule_s or model_updates is not None):
        raise ValueError("routes load their models once: --watch-model, --registry-schedule and model updates "
                         "cannot be honoured with routes")
    partitions = partitions_of(k.bootstrap_servers, k.input_topic)
    if output_files and set(stop_offsets or {}) != set(partitions):
        raise ValueError(f"file output needs a bounded read: stop offsets for every partition {partitions}")
    consumer = consumer_config(k.bootstrap_servers, k.group_id, k.consumer)
    bounded = set(stop_offsets or {}) >= set(partitions)
    if start_offsets is None and not bounded:
        # a streaming run resumes where the last one's bundles were committed (kafka.group_id)
        start_offsets = committed_offsets(consumer, k.input_topic, partitions)
        log.info("starting from committed offsets %s (else kafka.start_from=%s)", start_offsets, k.start_from)
    reads = partition_reads(k.input_topic, partitions, start_offsets, stop_offsets)
    chunks = p | "ReadKafka" >> ReadFromKafkaPartitions(
        reads, consumer, start=k.start_from, max_records=cfg.batch.max_events,
        poll_timeout_s=max(cfg.batch.poll_timeout_ms, IDLE_POLL_MS) / 1000, commit_offsets=not bounded)
    model_path = m.path
    if challengers is None and not cfg.routes:
        challengers = m.challenger_plan(cfg.job_name)
    if m.follows_registry and cfg.routes and challengers is None:
        from registry.follow import deployment_challengers

        if deployment_challengers(m.registry, m.name, m.env).challengers:
            raise ValueError(f"the deployment {m.name}/{m.env} has shadows or a canary, and routes cannot be "
                             "combined with them yet (the Flink job does not score them either)")
    if m.follows_registry and not cfg.routes:
        # the champion now (every runner); its history as an event-time side input (bounded runs)
        from registry.follow import champion_model_id, champion_schedule, deployment_challengers

        model_path = champion_model_id(m.registry, m.name, m.env)
        if challengers is None:
            challengers = deployment_challengers(m.registry, m.name, m.env)
        if record_comparisons is None:
            record_comparisons = {"registry": m.registry, "name": m.name, "env": m.env}
        if registry_schedule_s and model_updates is None:
            from operators.beam.pipeline import model_schedule

            schedule = champion_schedule(m.registry, m.name, m.env, registry_schedule_s)
            until = max(schedule) + registry_schedule_until_s
            model_updates = model_schedule(p, schedule, window_s=registry_schedule_s, until_s=until)
            event_time_window_s = registry_schedule_s
    if challengers is not None and not challengers.challengers:
        challengers = None
    if challengers is not None:
        log.info("challengers beside the champion: %s", ", ".join(
            f"{c.role} {c.candidate.describe() if c.candidate else c.error}" for c in challengers.challengers))
    scored = chunks | "Score" >> ScoreEvents(
        decoder=cfg.events.decoder_spec(), store_uri=f.store, model_path=model_path,
        retry=f.retry_policy(), missing=f.missing_policy(),
        intra_op_threads=m.intra_op_threads, max_batch_events=cfg.batch.max_events,
        load_options=m.load_options(),
        model_updates=model_updates, watch_model_pattern=watch_model_pattern, watch_interval_s=watch_interval_s,
        event_time_window_s=event_time_window_s, challengers=challengers, shadow_budget_ms=m.shadow_budget_ms,
        comparison_window_s=m.comparison_window_s, bounded=bounded, routes=cfg.route_plan())
    comparisons = scored[2]
    if comparisons is not None and record_comparisons:
        from operators.beam.pipeline import RecordComparisons

        comparisons | "RecordComparisons" >> beam.ParDo(RecordComparisons(**record_comparisons))
    if comparisons is None:
        scored = scored[:2]         # a PTransform takes PCollections only
    if output_files:
        return scored | "WriteFiles" >> WriteScoredToFiles(output_files)
    return scored | "WriteKafka" >> WriteScoredToKafka(
        producer_config(k.bootstrap_servers, k.producer), k.output_topic, k.dead_letter_topic,
        shadow_topic=k.shadow_topic_name() if challengers is not None else None,
        comparison_topic=k.comparison_topic_name() if challengers is not None else None)


def pipeline_options(cfg: JobConfig, beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options from the command line; the DirectRunner runs in this process, one worker."""
    options = PipelineOptions(list(beam_args), job_name=cfg.job_name)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    return options


def is_direct(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    name = (runner if isinstance(runner, str) else type(runner).__name__).rsplit(".", 1)[-1].lower()
    return name.removesuffix("runner") in DIRECT_RUNNERS


def run(cfg: JobConfig, args: argparse.Namespace) -> None:
    """Build and run the pipeline (blocks until a bounded read ends, or forever)."""
    options = pipeline_options(cfg, args.beam_args)
    if args.watch_model and is_direct(options):
        raise SystemExit("--watch-model needs a runner whose side inputs update while the pipeline runs "
                         "(Flink, Dataflow, Prism); the DirectRunner computes side inputs once before the "
                         "stage that reads them, so the pipeline would wait forever")
    with beam.Pipeline(options=options) as p:
        build(p, cfg, start_offsets=args.start_offsets, stop_offsets=args.stop_offsets,
              output_files=args.output_files, watch_model_pattern=args.watch_model,
              watch_interval_s=args.watch_interval, registry_schedule_s=args.registry_schedule)
        log.info("running %s on %s", cfg.job_name, options.view_as(StandardOptions).runner)
    log.info("%s finished", cfg.job_name)


def config_from_args(args: argparse.Namespace) -> JobConfig:
    if args.beam_args[:1] == ["--"]:
        args.beam_args = args.beam_args[1:]
    return load_config(args.config, list(args.set))


def configure_logging() -> None:
    """Warnings from everything, progress from the job (Beam logs every bundle at INFO)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(config_from_args(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

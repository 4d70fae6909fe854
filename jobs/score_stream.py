"""The scoring job: Kafka → async feature enrichment → model score → Kafka.

Run it locally (MiniCluster): ``streamscore run --config job.yaml``; on a cluster:
``flink run --python jobs/score_stream.py --pyFiles operators,connectors,model_formats,jobs -- --config job.yaml``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from connectors.kafka.clients import consumer_config, partitions_of, producer_config
from jobs.checkpoints import latest_checkpoint
from jobs.config import JobConfig
from jobs.run_cmd import add_job_arguments, config_from_args  # noqa: F401 (also this module's API)
from operators.flink.enrich import enrich
from operators.flink.file_sink import file_targets, write_to_files
from operators.flink.kafka_sink import write_to_kafka, write_to_kafka_exactly_once
from operators.flink.kafka_source import flink_kafka_micro_batches, kafka_micro_batches
from operators.flink.score import score_micro_batches
from operators.flink.worker import WorkerSettings
from operators.flink.worker import prepare_process as prepare_worker

log = logging.getLogger("streamscore.job")


def flink_configuration(cfg: JobConfig) -> Configuration:
    """The Flink settings the job needs (process mode: PyFlink's async I/O runs only there)."""
    f = cfg.flink
    settings = {
        "python.execution-mode": "process",
        "python.fn-execution.bundle.time": str(f.bundle_time_ms),
        "python.fn-execution.bundle.size": str(f.bundle_size),
        "parallelism.default": str(f.parallelism),
        "pipeline.max-parallelism": str(f.max_parallelism),
        "execution.buffer-timeout.interval": f"{f.buffer_timeout_ms} ms",
        "execution.checkpointing.interval": f"{f.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",   # of Flink state; kafka.delivery says the sink's
        "execution.checkpointing.dir": f.checkpoint_dir,
        "execution.checkpointing.unaligned.enabled": str(f.unaligned_checkpoints).lower(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(f.restart_attempts),
        "restart-strategy.fixed-delay.delay": "2 s",
        "pipeline.name": cfg.job_name,
    }
    if "PYFLINK_GATEWAY_PORT" not in os.environ:
        # run locally (MiniCluster): this interpreter runs the Python workers. Under `flink run` the
        # cluster's config.yaml names the workers' interpreter (python.executable) instead.
        settings["python.executable"] = settings["python.client.executable"] = sys.executable
    restore = f.restore_from
    if restore == "latest":
        restore = latest_checkpoint(f.checkpoint_dir)
        log.info("restoring from %s", restore or "nothing (no complete checkpoint yet)")
    if restore:
        settings["execution.state-recovery.path"] = restore
    settings.update({k: str(v) for k, v in f.conf.items()})
    conf = Configuration()
    for key, value in settings.items():
        conf.set_string(key, value)
    return conf


def micro_batches(env: StreamExecutionEnvironment, cfg: JobConfig) -> DataStream:
    """The job's source: decoded micro-batches from every partition of the input topic."""
    k = cfg.kafka
    if k.source == "flink":          # build() put the connector jars in pipeline.jars
        return flink_kafka_micro_batches(
            env,
            consumer_config=consumer_config(k.bootstrap_servers, k.group_id, k.consumer),
            topic=k.input_topic,
            start=k.start_from,
            decoder=cfg.events.decoder_spec(),
            max_events=cfg.batch.max_events,
            max_delay_ms=cfg.batch.poll_timeout_ms,
            discovery_interval_ms=k.partition_discovery_interval_ms,
        )
    return kafka_micro_batches(
        env,
        consumer_config=consumer_config(k.bootstrap_servers, k.group_id, k.consumer),
        topic=k.input_topic,
        partitions=partitions_of(k.bootstrap_servers, k.input_topic),
        start=k.start_from,
        decoder=cfg.events.decoder_spec(),
        max_events=cfg.batch.max_events,
        poll_timeout_s=cfg.batch.poll_timeout_ms / 1000.0,
        heartbeat_per_s=cfg.batch.heartbeat_per_s,
        max_parallelism=cfg.flink.max_parallelism,
    )


def kafka_connector_jars() -> list[Path]:
    """The jars Flink's own Kafka source and exactly-once sink need in ``pipeline.jars``: Flink's
    Kafka connector (Maven Central, pom profile ``flink-kafka``) and streamscore's record
    (de)serializers built from ``flink-conf/maven/kafka-records`` (both fetched or built by ``mvn``
    once, then cached)."""
    from connectors.embedded.maven import POM, built_jar, jars
    return [*sorted(jars("flink-kafka").glob("*.jar")), built_jar(POM.parent / "kafka-records")]


def needs_kafka_connector(cfg: JobConfig) -> bool:
    """Whether the job runs Flink's own Kafka source or exactly-once sink (:func:`kafka_connector_jars`)."""
    kafka_sink = cfg.sink.kind in ("kafka", "both")
    return cfg.kafka.source == "flink" or (kafka_sink and cfg.kafka.delivery == "exactly_once")


def build(env: StreamExecutionEnvironment, cfg: JobConfig) -> None:
    """Wire the pipeline onto ``env``."""
    k = cfg.kafka
    schema = cfg.events.schema()
    if needs_kafka_connector(cfg):
        env.add_jars(*(jar.as_uri() for jar in kafka_connector_jars()))
    batches = micro_batches(env, cfg)
    f = cfg.features
    enriched = enrich(batches, store_uri=f.store, key_field=schema.key_field, retry=f.retry_policy(),
                      capacity=f.capacity, missing=f.missing_policy(), mode=f.lookup)
    m = cfg.model
    scored = score_micro_batches(enriched, model=m.source(f.store), schema=schema,
                                 intra_op_threads=m.intra_op_threads,
                                 reload_interval_s=m.check_interval_s(),
                                 load_options=m.load_options(),
                                 experiments=cfg.runs_experiments, challengers=m.challenger_plan(cfg.job_name),
                                 shadow_budget_ms=m.shadow_budget_ms,
                                 comparison_window_ms=int(m.comparison_window_s * 1000),
                                 routes=cfg.route_plan())
    experiment_topics = dict(shadow_topic=k.shadow_topic_name(), comparison_topic=k.comparison_topic_name()) \
        if cfg.runs_experiments else {}
    s = cfg.sink
    if s.kind in ("kafka", "both") and k.delivery == "exactly_once":
        write_to_kafka_exactly_once(scored, bootstrap_servers=k.bootstrap_servers, topic=k.output_topic,
                                    dead_letter_topic=k.dead_letter_topic,
                                    transactional_id_prefix=k.transactional_id_prefix or cfg.job_name,
                                    transaction_timeout_ms=k.transaction_timeout_ms, **experiment_topics)
    elif s.kind in ("kafka", "both"):
        write_to_kafka(scored, producer_config=producer_config(k.bootstrap_servers, k.producer),
                       topic=k.output_topic, dead_letter_topic=k.dead_letter_topic, **experiment_topics)
    if s.kind in ("files", "both"):
        shadows = cfg.runs_experiments and bool(m.shadows or m.follows_registry)   # a deployment's may come
        write_to_files(scored, file_targets(s.path, s.format, s.partitioning, int(s.roll_size_mb * (1 << 20)),
                                            s.roll_interval_s, s.include_dead_letters, include_shadow=shadows))


def prepare_process(cfg: JobConfig) -> None:
    """Process-wide settings of the process that submits (and, on a local MiniCluster, runs) the
    job, made once where it starts (``main``, ``streamscore run``), never by a library call: where
    PyFlink runs its Python workers (read from a private environment variable at submission) and
    the worker settings of the operators that run in this process."""
    if cfg.flink.python_workers == "process":
        os.environ["_python_worker_execution_mode"] = "process"
    prepare_worker(WorkerSettings())


def run(cfg: JobConfig) -> None:
    """Build and run the job (blocks until it ends or is cancelled); ``prepare_process`` first."""
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(cfg))
    build(env, cfg)
    env.execute(cfg.job_name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(parse_args(argv))
    prepare_process(cfg)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())

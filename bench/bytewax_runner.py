"""The scoring job on Bytewax (0.21): KafkaSource → flat_map_batch (decode, Plasma lookup, ONNX
score: the job's steps on each batch the source hands over) → KafkaSink, one worker, recovery
snapshots every ``flink.checkpoint_interval_ms`` (Bytewax's epoch; the sink flushes every
batch: at-least-once). Runs in ``.venv-bench``; until killed.

    python -m bench.bytewax_runner --config job.yaml
"""
from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from itertools import groupby

if __name__ == "__main__":
    from bench.competitors import use_bench_venv
    use_bench_venv()

import bytewax.operators as op  # noqa: E402
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.recovery import RecoveryConfig, init_db_dir  # noqa: E402
from bytewax.run import cli_main  # noqa: E402

from bench.competitors import state_dir  # noqa: E402
from bench.plain_loop import ChunkScorer  # noqa: E402
from connectors.kafka.clients import CONSUMER_DEFAULTS, PRODUCER_DEFAULTS  # noqa: E402
from connectors.kafka.partition_reader import RecordChunk  # noqa: E402
from jobs.config import JobConfig, load_config  # noqa: E402
from operators import steps  # noqa: E402


def flow(cfg: JobConfig) -> Dataflow:
    """The dataflow: every source batch is split by partition and scored as one micro-batch."""
    k = cfg.kafka
    score = ChunkScorer(cfg)

    def score_batch(messages: list) -> list[KafkaSinkMessage]:
        out = []
        for (topic, partition), group in groupby(messages, key=lambda m: (m.topic, m.partition)):
            group = list(group)
            scored = score(RecordChunk(topic, partition, [m.value for m in group], [m.offset for m in group]))
            values, keys = steps.prediction_records(scored)
            out += [KafkaSinkMessage(key, value) for key, value in zip(keys or [], values)]
            out += [KafkaSinkMessage(d.source.encode(), d.value, topic=k.dead_letter_topic, headers=d.headers())
                    for d in scored.dead_letters]
        return out

    df = Dataflow(cfg.job_name)
    source = KafkaSource([k.bootstrap_servers], [k.input_topic], add_config={**CONSUMER_DEFAULTS, **k.consumer},
                         batch_size=cfg.batch.max_events)
    predictions = op.flat_map_batch("score", op.input("kafka-in", df, source), score_batch)
    op.output("kafka-out", predictions, KafkaSink([k.bootstrap_servers], k.output_topic,
                                                  add_config={**PRODUCER_DEFAULTS, **k.producer}))
    return df


def recovery(cfg: JobConfig) -> RecoveryConfig:
    """Bytewax's recovery store (SQLite), next to where the Flink job keeps its checkpoints."""
    db_dir = state_dir(cfg.flink.checkpoint_dir, "bytewax-recovery")
    if not db_dir.exists():
        db_dir.mkdir(parents=True)
        init_db_dir(db_dir, 1)
    return RecoveryConfig(db_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    cfg = load_config(parser.parse_args().config)
    cli_main(flow(cfg), workers_per_process=1, recovery_config=recovery(cfg),
             epoch_interval=timedelta(milliseconds=cfg.flink.checkpoint_interval_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kafka sink written in Python: predictions to the output topic, dead letters to the DLQ.

Each micro-batch is acknowledged by the broker before the operator returns, so a checkpoint
barrier (which follows the batch) never completes over unacknowledged records: at-least-once.
"""
from __future__ import annotations

from typing import Any

from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.datastream.functions import MapFunction, RuntimeContext

from connectors.kafka.writer import KafkaBatchWriter
from operators import steps
from operators.flink import discard
from operators.flink.metrics import OutputMetrics, metric_group


class WriteToKafka(MapFunction):
    def __init__(self, producer_config: dict[str, Any], topic: str, dead_letter_topic: str) -> None:
        self.producer_config = producer_config
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic

    def open(self, ctx: RuntimeContext) -> None:
        self._writer = KafkaBatchWriter(self.producer_config, self.topic, self.dead_letter_topic)
        metrics = metric_group(ctx)
        self._outputs = OutputMetrics(metrics)
        self._latency = metrics.distribution("poll_to_ack_ms")

    def map(self, scored: steps.ScoredBatch) -> int:
        values, keys = steps.prediction_records(scored)
        self._writer.write(values, keys, scored.dead_letters)
        self._outputs.count(len(values), scored.dead_letters)
        self._latency.update(int(steps.now_ms() - scored.batch.polled_at_ms))
        return len(values) + len(scored.dead_letters)

    def close(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()


def write_to_kafka(stream: DataStream, *, producer_config: dict[str, Any], topic: str, dead_letter_topic: str):
    written = (stream.map(WriteToKafka(producer_config, topic, dead_letter_topic), Types.INT())
               .name("sink").uid(f"kafka-sink-{topic}"))
    return discard(written)

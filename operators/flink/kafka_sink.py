"""Kafka sinks: predictions to the output topic, dead letters to the DLQ.

At-least-once (:func:`write_to_kafka`, written in Python): each micro-batch is acknowledged by the
broker before the operator returns, so a checkpoint barrier (which follows the batch) never
completes over unacknowledged records.

Exactly-once (:func:`write_to_kafka_exactly_once`): a Python operator turns each micro-batch into
Kafka record rows, and Flink's own transactional ``KafkaSink`` writes them in a transaction that
commits when the checkpoint completes (PyFlink gives Python operators no checkpoint callbacks). Its
record serializer is ``streamscore.flink.KafkaRowSerializer`` (flink-conf/maven/kafka-records:
PyFlink cannot set record headers, and dead letters carry theirs); the connector and that jar must
be in the job's ``pipeline.jars``.
"""
from __future__ import annotations

import logging
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import DataStream
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import KafkaSink
from pyflink.datastream.functions import FlatMapFunction, MapFunction, RuntimeContext
from pyflink.java_gateway import get_gateway

from connectors.kafka.writer import ExperimentTopics, KafkaBatchWriter  # noqa: F401 (ExperimentTopics: this module's API too)
from operators import steps
from operators.steps import experiment_records
from operators.flink import discard
from operators.flink.metrics import OutputMetrics, metric_group

log = logging.getLogger(__name__)


class WriteToKafka(MapFunction):
    def __init__(self, producer_config: dict[str, Any], topic: str, dead_letter_topic: str,
                 shadow_topic: str | None = None, comparison_topic: str | None = None) -> None:
        self.producer_config = producer_config
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.shadow_topic = shadow_topic
        self.comparison_topic = comparison_topic

    def open(self, ctx: RuntimeContext) -> None:
        self._writer = KafkaBatchWriter(self.producer_config, self.topic, self.dead_letter_topic)
        metrics = metric_group(ctx)
        self._outputs = OutputMetrics(metrics)
        self._latency = metrics.distribution("poll_to_ack_ms")
        self._extra_out = {}
        if self.shadow_topic or self.comparison_topic:
            self._extra_out = {self.shadow_topic: metrics.counter("shadow_predictions_out"),
                               self.comparison_topic: metrics.counter("comparisons_out")}
            self._extra_dropped = metrics.counter("experiment_records_dropped")
            self._extra_topics = ExperimentTopics(self._writer)

    def map(self, scored: steps.ScoredBatch) -> int:
        values, keys = steps.prediction_records(scored)
        extra = experiment_records(scored, self.shadow_topic, self.comparison_topic)
        if extra:
            dropped = [e for e in extra if not self._extra_topics.writable(e[0])]
            if dropped:
                self._extra_dropped.inc(sum(len(e[1]) for e in dropped))
                extra = [e for e in extra if e not in dropped]
        self._writer.write(values, keys, scored.dead_letters, extra)
        for topic, extra_values, _ in extra:
            self._extra_out[topic].inc(len(extra_values))
        self._outputs.count(len(values), scored.dead_letters)
        self._latency.update(int(steps.now_ms() - scored.batch.polled_at_ms))
        return len(values) + len(scored.dead_letters)

    def close(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()


def write_to_kafka(stream: DataStream, *, producer_config: dict[str, Any], topic: str, dead_letter_topic: str,
                   shadow_topic: str | None = None, comparison_topic: str | None = None):
    written = (stream.map(WriteToKafka(producer_config, topic, dead_letter_topic, shadow_topic, comparison_topic),
                          Types.INT())
               .name("sink").uid(f"kafka-sink-{topic}"))
    return discard(written)


# One Kafka record as the Java serializer (streamscore.flink.KafkaRowSerializer) reads it.
KAFKA_RECORD = Types.ROW_NAMED(
    ["topic", "key", "value", "headers"],
    [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE()),
     Types.MAP(Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()))])
ROW_SERIALIZER_CLASS = "streamscore.flink.KafkaRowSerializer"


class ToKafkaRecords(FlatMapFunction):
    """A scored micro-batch as Kafka record rows: predictions (key = entity id) and dead letters
    (the original bytes, key = source coordinates, reason/detail/source headers), the same records
    the at-least-once sink writes. Counts them as handed to the sink, which commits them with
    the next checkpoint."""

    def __init__(self, topic: str, dead_letter_topic: str, shadow_topic: str | None = None,
                 comparison_topic: str | None = None) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.shadow_topic = shadow_topic
        self.comparison_topic = comparison_topic

    def open(self, ctx: RuntimeContext) -> None:
        self._outputs = OutputMetrics(metric_group(ctx))

    def flat_map(self, scored: steps.ScoredBatch):
        values, keys = steps.prediction_records(scored)
        for value, key in zip(values, keys or ()):
            yield Row(self.topic, key, value, None)
        for topic, extra_values, extra_keys in experiment_records(scored, self.shadow_topic, self.comparison_topic):
            for value, key in zip(extra_values, extra_keys):
                yield Row(topic, key, value, None)
        for letter in scored.dead_letters:
            yield Row(self.dead_letter_topic, letter.source.encode(), letter.value, dict(letter.headers()))
        self._outputs.count(len(values), scored.dead_letters)


def write_to_kafka_exactly_once(stream: DataStream, *, bootstrap_servers: str, topic: str, dead_letter_topic: str,
                                transactional_id_prefix: str, transaction_timeout_ms: int,
                                producer_properties: dict[str, Any] | None = None,
                                shadow_topic: str | None = None, comparison_topic: str | None = None):
    """Predictions and dead letters through Flink's transactional ``KafkaSink``
    (``DeliveryGuarantee.EXACTLY_ONCE``): visible to ``read_committed`` consumers once the
    checkpoint that covers them completes, once each across restores."""
    records = (stream.flat_map(ToKafkaRecords(topic, dead_letter_topic, shadow_topic, comparison_topic),
                               KAFKA_RECORD)
               .name("sink").uid(f"kafka-records-{topic}"))
    jvm = get_gateway().jvm
    builder = (jvm.org.apache.flink.connector.kafka.sink.KafkaSink.builder()
               .setBootstrapServers(bootstrap_servers)
               .setRecordSerializer(getattr(jvm, ROW_SERIALIZER_CLASS)())
               .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE._to_j_delivery_guarantee())
               .setTransactionalIdPrefix(transactional_id_prefix)
               .setProperty("transaction.timeout.ms", str(transaction_timeout_ms)))
    for key, value in (producer_properties or {}).items():
        builder = builder.setProperty(key, str(value))
    return (records.sink_to(KafkaSink(builder.build()))
            .name("kafka-transactional-sink").uid(f"kafka-transactional-sink-{topic}"))

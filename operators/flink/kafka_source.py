"""A Kafka source written in Python for PyFlink (no Flink Kafka connector jar is needed).

A heartbeat (the bundled ``datagen`` table source) fans out to one element per topic partition;
a keyed operator (key = partition) polls that partition once per heartbeat and emits one decoded
micro-batch. The next offset of each partition lives in Flink keyed state, so a restore from a
checkpoint resumes exactly where the checkpoint was taken. (Processing-time timers alone stall
after a restore in PyFlink's process mode; the heartbeat input re-arms polling.)

Cadence: Flink's datagen emits a whole second's ticks at once and then sleeps until the next
second, so at a modest rate polling pauses once a second's ticks are used up (a latency tail on an
otherwise idle machine). The heartbeat therefore runs far faster than polls take ticks
(backpressure holds it back) and each poll collects records for up to ``poll_timeout_s``: polls
run back to back at that cadence, and an idle source waits in the Kafka client instead of
spinning through empty polls.

The alternative, ``kafka.source: flink`` (:func:`flink_kafka_micro_batches`), is Flink's own
``KafkaSource`` (offsets in Flink's checkpoints, partitions added while the job runs are found and
read) followed by ``streamscore.flink.RecordBatcher`` (flink-conf/maven/kafka-records), which groups
records per partition into micro-batches that never span a checkpoint barrier; one Python operator
then decodes each. Everything downstream consumes the same micro-batches either way.
"""
from __future__ import annotations

from typing import Any

from pyflink.common import Types, WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaSource
from pyflink.java_gateway import get_gateway
from pyflink.datastream.functions import FlatMapFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.table import StreamTableEnvironment

from connectors.events import DecoderSpec
from connectors.kafka.partition_reader import PartitionReader, RecordChunk
from operators import steps
from operators.batch import MicroBatch
from operators.flink.metrics import metric_group
from operators.flink.partition_keys import PartitionKey, check_with_flink, partition_keys
from operators.flink.worker import WorkerSettings, prepare_process



def heartbeat(env: StreamExecutionEnvironment, per_second: int) -> DataStream:
    """An unbounded stream of up to ``per_second`` ticks a second (datagen: one burst a second)."""
    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(
        "CREATE TEMPORARY TABLE streamscore_heartbeat (tick INT) WITH ("
        f"'connector'='datagen', 'rows-per-second'='{int(per_second)}', "
        "'fields.tick.kind'='random', 'fields.tick.min'='0', 'fields.tick.max'='0')")
    return t_env.to_data_stream(t_env.from_path("streamscore_heartbeat"))


class FanOutToPartitions(FlatMapFunction):
    """One heartbeat → one element per partition."""

    def __init__(self, partitions: list[int]) -> None:
        self.partitions = list(partitions)

    def flat_map(self, _tick):
        yield from self.partitions


class _ChunkDecoder:
    """What both sources do with raw records: set the worker process up, decode a chunk into a
    MicroBatch, count records in and undecodable records."""

    def _open_decoder(self, ctx: RuntimeContext, worker: WorkerSettings, decoder: DecoderSpec):
        prepare_process(worker)      # once per worker process (PyFlink has no worker-start hook)
        self._decoder = decoder.build()
        metrics = metric_group(ctx)
        self._records_in = metrics.counter("records_in")
        self._events_per_s = metrics.meter("events_in_per_s")
        self._decode_rejects = metrics.counter("records_undecodable")
        return metrics

    def _decode(self, chunk: RecordChunk) -> MicroBatch:
        batch = steps.decode(self._decoder, chunk)
        self._records_in.inc(len(chunk.offsets))
        self._events_per_s.mark_event(len(chunk.offsets))
        self._decode_rejects.inc(len(batch.dead_letters))
        return batch


class PollKafkaPartition(_ChunkDecoder, KeyedProcessFunction):
    """Keyed by partition (``PartitionKey``): polls it from the checkpointed offset and emits a
    MicroBatch."""

    def __init__(self, consumer_config: dict[str, Any], topic: str, start: str, decoder: DecoderSpec,
                 max_events: int, poll_timeout_s: float, worker: WorkerSettings = WorkerSettings()) -> None:
        self.worker = worker
        self.consumer_config = consumer_config
        self.topic = topic
        self.start = start
        self.decoder = decoder
        self.max_events = max_events
        self.poll_timeout_s = poll_timeout_s

    def open(self, ctx: RuntimeContext) -> None:
        metrics = self._open_decoder(ctx, self.worker, self.decoder)
        self._next_offset = ctx.get_state(ValueStateDescriptor("next_offset", Types.LONG()))
        self._readers: dict[int, PartitionReader] = {}
        metrics.gauge("records_lag", lambda: sum(r.lag() or 0 for r in self._readers.values()))

    def process_element(self, partition: int, ctx):
        reader = self._readers.get(partition)
        if reader is None:
            reader = self._readers[partition] = PartitionReader(
                self.consumer_config, self.topic, partition, self.start)
        chunk = reader.read(self._next_offset.value(), self.max_events, self.poll_timeout_s)
        if not chunk.offsets:
            return
        self._next_offset.update(chunk.next_offset)
        yield self._decode(chunk)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers = {}


def kafka_micro_batches(env: StreamExecutionEnvironment, *, consumer_config: dict[str, Any], topic: str,
                        partitions: list[int], start: str, decoder: DecoderSpec,
                        max_events: int, poll_timeout_s: float, heartbeat_per_s: int,
                        max_parallelism: int) -> DataStream:
    """A stream of decoded MicroBatches read from every partition of ``topic``, the partitions
    spread evenly over the subtasks (``operators.flink.partition_keys``; ``max_parallelism``: the
    job's ``pipeline.max-parallelism``)."""
    keys = partition_keys(partitions, max_parallelism)
    check_with_flink(keys, max_parallelism)
    ticks = heartbeat(env, heartbeat_per_s)
    # uid "-spread": the state of sources keyed by the bare partition number (before the partition
    # keys) is refused on restore ("cannot map ... state"), not silently read from start_from again
    return (ticks.flat_map(FanOutToPartitions(partitions), Types.INT())
            .key_by(PartitionKey(keys), Types.INT())
            .process(PollKafkaPartition(consumer_config, topic, start, decoder, max_events, poll_timeout_s),
                     Types.PICKLED_BYTE_ARRAY())
            .name("source").uid(f"kafka-source-spread-{topic}"))


class DecodeRecordBatch(_ChunkDecoder, FlatMapFunction):
    """One row of ``RecordBatcher`` (partition, offsets, values) → one decoded MicroBatch."""

    def __init__(self, topic: str, decoder: DecoderSpec, worker: WorkerSettings = WorkerSettings()) -> None:
        self.topic = topic
        self.decoder = decoder
        self.worker = worker

    def open(self, ctx: RuntimeContext) -> None:
        self._open_decoder(ctx, self.worker, self.decoder)

    def flat_map(self, row):
        partition, offsets, values = row[0], list(row[1]), list(row[2])
        yield self._decode(RecordChunk(self.topic, partition, values, offsets))


# the Java classes (flink-conf/maven/kafka-records) and the rows they make, as PyFlink types
DESERIALIZER_CLASS = "streamscore.flink.KafkaRecordDeserializer"
BATCHER_CLASS = "streamscore.flink.RecordBatcher"
RECORD_BATCH = Types.ROW_NAMED(["partition", "offsets", "values"],
                               [Types.INT(), Types.PRIMITIVE_ARRAY(Types.LONG()),
                                Types.OBJECT_ARRAY(Types.PRIMITIVE_ARRAY(Types.BYTE()))])


def flink_kafka_micro_batches(env: StreamExecutionEnvironment, *, consumer_config: dict[str, Any], topic: str,
                              start: str, decoder: DecoderSpec, max_events: int, max_delay_ms: int,
                              discovery_interval_ms: int) -> DataStream:
    """A stream of decoded MicroBatches read by Flink's ``KafkaSource`` (the job must carry the
    connector jar and ``streamscore-kafka-records`` in ``pipeline.jars``). A partition with no
    checkpointed offset starts at ``start``; new partitions are looked for every
    ``discovery_interval_ms`` and read from their beginning. ``consumer_config`` (librdkafka
    names) gives ``bootstrap.servers`` and ``group.id``; other keys that the Java client shares
    (e.g. ``security.protocol``) pass through."""
    jvm = get_gateway().jvm
    offsets = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
    properties = {k: str(v) for k, v in consumer_config.items() if k in JAVA_CLIENT_PROPERTIES}
    builder = (jvm.org.apache.flink.connector.kafka.source.KafkaSource.builder()
               .setBootstrapServers(consumer_config["bootstrap.servers"])
               .setGroupId(consumer_config.get("group.id", "streamscore"))
               .setTopics(jvm.java.util.Collections.singletonList(topic))
               .setStartingOffsets(offsets.earliest() if start == "earliest" else offsets.latest())
               .setDeserializer(getattr(jvm, DESERIALIZER_CLASS)())
               .setProperty("partition.discovery.interval.ms", str(int(discovery_interval_ms)))
               .setProperty("commit.offsets.on.checkpoint", "true"))     # for lag monitoring only
    for key, value in properties.items():
        builder = builder.setProperty(key, value)
    records = env.from_source(KafkaSource(builder.build()), WatermarkStrategy.no_watermarks(),
                              f"kafka-source-{topic}")
    batcher = getattr(jvm, BATCHER_CLASS)(int(max_events), int(max(1, max_delay_ms)))
    batched = DataStream(records._j_data_stream.transform(
        "batch", RECORD_BATCH.get_java_type_info(), batcher)).uid(f"kafka-batcher-{topic}")
    return (batched.flat_map(DecodeRecordBatch(topic, decoder), Types.PICKLED_BYTE_ARRAY())
            .name("source").uid(f"kafka-decode-{topic}"))


# consumer settings both librdkafka and the Java client know by the same name
JAVA_CLIENT_PROPERTIES = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.jaas.config", "ssl.truststore.location", "ssl.truststore.password",
    "ssl.keystore.location", "ssl.keystore.password", "client.id", "isolation.level", "fetch.min.bytes",
    "fetch.max.wait.ms", "max.partition.fetch.bytes", "session.timeout.ms"})

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

Where the official Flink Kafka connector jar exists, ``KafkaSource`` can replace this operator:
everything downstream consumes micro-batches of raw records the same way.
"""
from __future__ import annotations

from typing import Any

from pyflink.common import Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.functions import FlatMapFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.table import StreamTableEnvironment

from connectors.events import DecoderSpec
from connectors.kafka.partition_reader import PartitionReader
from operators import steps
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


class PollKafkaPartition(KeyedProcessFunction):
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
        prepare_process(self.worker)      # once per worker process (PyFlink has no worker-start hook)
        self._next_offset = ctx.get_state(ValueStateDescriptor("next_offset", Types.LONG()))
        self._readers: dict[int, PartitionReader] = {}
        self._decoder = self.decoder.build()
        metrics = metric_group(ctx)
        self._records_in = metrics.counter("records_in")
        self._events_per_s = metrics.meter("events_in_per_s")
        metrics.gauge("records_lag", lambda: sum(r.lag() or 0 for r in self._readers.values()))
        self._decode_rejects = metrics.counter("records_undecodable")

    def process_element(self, partition: int, ctx):
        reader = self._readers.get(partition)
        if reader is None:
            reader = self._readers[partition] = PartitionReader(
                self.consumer_config, self.topic, partition, self.start)
        chunk = reader.read(self._next_offset.value(), self.max_events, self.poll_timeout_s)
        if not chunk.offsets:
            return
        self._next_offset.update(chunk.next_offset)
        batch = steps.decode(self._decoder, chunk)
        self._records_in.inc(len(chunk.offsets))
        self._events_per_s.mark_event(len(chunk.offsets))
        self._decode_rejects.inc(len(batch.dead_letters))
        yield batch

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

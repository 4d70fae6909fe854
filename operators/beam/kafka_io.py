"""Kafka read and write for Beam in Python (Beam's ``ReadFromKafka`` needs a Java expansion
service jar, which cannot be downloaded everywhere).

Reading is a splittable DoFn, one element per topic partition: the restriction is the offset
range still to read, so the runner's checkpoints of the restriction are the consumer offsets
(nothing is committed to Kafka). A bounded range ``[start, stop)`` ends the read (backfills,
tests); an open range reads forever, handing back to the runner between polls
(``defer_remainder``). Each poll emits one :class:`RecordChunk` of raw records, a micro-batch.

Writing is a DoFn over scored micro-batches: predictions to the output topic, dead letters to
the dead-letter topic, acknowledged by the broker before ``process`` returns, so a bundle never
commits over unacknowledged records (at-least-once).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterable, Mapping

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import WalltimeWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from connectors.dead_letter import DeadLetter
from connectors.kafka.partition_reader import PartitionReader, RecordChunk
from connectors.kafka.writer import ExperimentTopics, KafkaBatchWriter
from operators import steps
from operators.batch import MicroBatch
from operators.beam.common import METRICS_NAMESPACE

UNBOUNDED = 2**63 - 1   # stop offset of an open-ended read


@dataclass(frozen=True)
class PartitionRead:
    """What to read of one partition. ``start_offset`` None: the reader's configured start
    (earliest/latest); ``stop_offset`` None: never stop (exclusive otherwise)."""

    topic: str
    partition: int
    start_offset: int | None = None
    stop_offset: int | None = None


class _OffsetRanges(RestrictionProvider):
    """The restriction of a partition read is the offset range still to read."""

    def initial_restriction(self, read: PartitionRead) -> OffsetRange:
        stop = UNBOUNDED if read.stop_offset is None else read.stop_offset
        return OffsetRange(read.start_offset or 0, stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, read: PartitionRead, restriction: OffsetRange) -> int:
        return restriction.size()

    def truncate(self, read: PartitionRead, restriction: OffsetRange):
        """On drain an open-ended read stops at its next checkpoint; a bounded one finishes."""
        return None if restriction.stop == UNBOUNDED else restriction


class ReadPartitionFn(beam.DoFn):
    """Splittable DoFn: PartitionRead → RecordChunks (one per poll), offsets claimed in the
    restriction, for bounded reads (every read has a stop offset). Outputs are stamped with the
    poll's wall-clock time (processing-time watermark).

    With ``commit_offsets``, the offsets a bundle read are committed to the consumer group once
    the runner has committed the bundle (bundle finalization: its outputs are written), so a
    fresh start can resume there (see :func:`committed_offsets`), as Beam's Java KafkaIO does
    with ``commitOffsetsInFinalize``. The restriction stays the authority while running."""

    def __init__(self, consumer_config: Mapping[str, Any], start: str = "earliest", max_records: int = 2000,
                 poll_timeout_s: float = 0.05, commit_offsets: bool = False) -> None:
        """``poll_timeout_s``: how long a poll waits when the consumer holds no records (the
        DirectRunner resumes a deferred read at once, so this is what keeps an idle read cheap)."""
        self.consumer_config = dict(consumer_config)
        self.start = start
        self.max_records = max_records
        self.poll_timeout_s = poll_timeout_s
        self.commit_offsets = commit_offsets

    def setup(self) -> None:
        self._readers: dict[tuple[str, int], PartitionReader] = {}
        self._records = Metrics.counter(METRICS_NAMESPACE, "kafka_records_read")
        self._chunk_size = Metrics.distribution(METRICS_NAMESPACE, "kafka_chunk_records")

    def _reader(self, read: PartitionRead) -> PartitionReader:
        key = (read.topic, read.partition)
        reader = self._readers.get(key)
        if reader is None:
            reader = self._readers[key] = PartitionReader(self.consumer_config, read.topic, read.partition, self.start)
        return reader

    def process(self, read: PartitionRead, finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_OffsetRanges()),
                _watermark=beam.DoFn.WatermarkEstimatorParam(WalltimeWatermarkEstimator.default_provider())
                ) -> Iterable[TimestampedValue]:
        # (the finalizer comes first: Beam passes it by position, the restriction by name)
        restriction = tracker.current_restriction()
        if restriction.start < restriction.stop:
            # nothing claimed yet and no explicit start: the consumer resolves earliest/latest
            from_offset = None if read.start_offset is None and restriction.start == 0 else restriction.start
            reader = self._reader(read)
            chunk = reader.read(from_offset, self.max_records, 0)   # what the consumer holds already
            if not chunk.offsets:                                  # idle: wait a little, not spin
                chunk = reader.read(from_offset, self.max_records, self.poll_timeout_s)
            claimed = 0
            while claimed < len(chunk.offsets) and tracker.try_claim(chunk.offsets[claimed]):
                claimed += 1
            if claimed:
                self._records.inc(claimed)
                self._chunk_size.update(claimed)
                yield TimestampedValue(RecordChunk(read.topic, read.partition, chunk.values[:claimed],
                                                   chunk.offsets[:claimed]), Timestamp.now())
                if self.commit_offsets:
                    finalizer.register(partial(self._commit, read, chunk.offsets[claimed - 1] + 1))
            # a failed claim, or the last offset of the range claimed: the range is done
            done = claimed < len(chunk.offsets) or (claimed and chunk.offsets[claimed - 1] >= restriction.stop - 1)
            if not done:
                tracker.defer_remainder(Duration.of(0))

    def _commit(self, read: PartitionRead, next_offset: int) -> None:
        # asynchronous: a lost commit only means a longer replay after a restart, never a loss
        self._reader(read).commit(next_offset, asynchronous=True)

    def teardown(self) -> None:
        for reader in getattr(self, "_readers", {}).values():
            reader.close()
        self._readers = {}


class ReadPartitionForeverFn(ReadPartitionFn):
    """ReadPartitionFn for open-ended reads: its output is an unbounded PCollection."""

    @beam.DoFn.unbounded_per_element()
    def process(self, read: PartitionRead, finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_OffsetRanges()),
                _watermark=beam.DoFn.WatermarkEstimatorParam(WalltimeWatermarkEstimator.default_provider())
                ) -> Iterable[TimestampedValue]:
        yield from super().process(read, finalizer, tracker, _watermark)


class ReadFromKafkaPartitions(beam.PTransform):
    """Raw records of the given partition reads, as RecordChunks (micro-batches). The output is
    a bounded PCollection when every read has a stop offset, else an unbounded one."""

    def __init__(self, reads: Iterable[PartitionRead], consumer_config: Mapping[str, Any], *,
                 start: str = "earliest", max_records: int = 2000, poll_timeout_s: float = 0.05,
                 commit_offsets: bool = False) -> None:
        super().__init__()
        self.reads = list(reads)
        bounded = all(r.stop_offset is not None for r in self.reads)
        fn = ReadPartitionFn if bounded else ReadPartitionForeverFn
        self.fn = fn(consumer_config, start, max_records, poll_timeout_s, commit_offsets)

    def expand(self, pbegin):
        return (pbegin
                | "Partitions" >> beam.Create(self.reads, reshuffle=False)
                | "ReadPartitions" >> beam.ParDo(self.fn))


def partition_reads(topic: str, partitions: Iterable[int], start_offsets: Mapping[int, int] | None = None,
                    stop_offsets: Mapping[int, int] | None = None) -> list[PartitionRead]:
    """One PartitionRead per partition (offsets by partition; absent: configured start / no stop)."""
    start_offsets, stop_offsets = start_offsets or {}, stop_offsets or {}
    return [PartitionRead(topic, p, start_offsets.get(p), stop_offsets.get(p)) for p in partitions]


class WriteToKafkaFn(beam.DoFn):
    """Writes scored micro-batches (predictions + dead letters), or micro-batches whose events
    all became dead letters. A bundle's records are written together in ``finish_bundle`` and
    acknowledged by the broker before it returns, so a bundle never commits over unacknowledged
    records."""

    def __init__(self, producer_config: Mapping[str, Any], topic: str, dead_letter_topic: str, *,
                 shadow_topic: str | None = None) -> None:
        """``shadow_topic``: where the batches' shadow predictions go (best effort: a topic that
        does not exist drops them, logged and counted in ``experiment_records_dropped``)."""
        self.producer_config = dict(producer_config)
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.shadow_topic = shadow_topic

    def setup(self) -> None:
        self._writer = KafkaBatchWriter(self.producer_config, self.topic, self.dead_letter_topic)
        self._topics = ExperimentTopics(self._writer)
        self._predictions = Metrics.counter(METRICS_NAMESPACE, "predictions_out")
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters_out")
        self._shadow_out = Metrics.counter(METRICS_NAMESPACE, "shadow_predictions_out")
        self._dropped = Metrics.counter(METRICS_NAMESPACE, "experiment_records_dropped")
        self._latency = Metrics.distribution(METRICS_NAMESPACE, "poll_to_ack_ms")

    def start_bundle(self) -> None:
        self._values: list[bytes] = []
        self._keys: list[bytes] = []
        self._letters: list[DeadLetter] = []
        self._polled_at_ms: list[float] = []
        self._shadow_values: list[bytes] = []
        self._shadow_keys: list[bytes] = []

    def process(self, item: steps.ScoredBatch | MicroBatch) -> Iterable[None]:
        if isinstance(item, MicroBatch):
            if item.events.num_rows:
                raise ValueError("a MicroBatch reaching the writer must hold dead letters only")
            source = item
        else:
            values, keys = steps.prediction_records(item)
            self._values += values
            self._keys += keys or []
            for _, shadow_values, shadow_keys in steps.experiment_records(item, self.shadow_topic, None):
                self._shadow_values += shadow_values
                self._shadow_keys += shadow_keys
            source = item.batch
        self._letters += item.dead_letters
        self._polled_at_ms.append(source.polled_at_ms)
        return ()                   # written in finish_bundle; nothing goes downstream

    def finish_bundle(self) -> None:
        if not self._values and not self._letters and not self._shadow_values:
            return
        extra = []
        if self._shadow_values:
            if self._topics.writable(self.shadow_topic):
                extra.append((self.shadow_topic, self._shadow_values, self._shadow_keys))
                self._shadow_out.inc(len(self._shadow_values))
            else:
                self._dropped.inc(len(self._shadow_values))
        self._writer.write(self._values, self._keys, self._letters, extra)
        for reason, n in Counter(letter.reason for letter in self._letters).items():
            Metrics.counter(f"{METRICS_NAMESPACE}.dead_letters", reason).inc(n)
        self._predictions.inc(len(self._values))
        self._dead.inc(len(self._letters))
        acked = steps.now_ms()
        for polled in self._polled_at_ms:
            self._latency.update(int(acked - polled))

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
            self._writer = None     # the producer's threads stop once it is collected


class WriteComparisonsToKafkaFn(beam.DoFn):
    """Comparison window summaries to ``topic`` (JSON, key ``champion|challenger``: the Flink job's
    comparison records), acknowledged per bundle; best effort like the Flink job's (a topic that
    does not exist drops them, logged and counted)."""

    def __init__(self, producer_config: Mapping[str, Any], topic: str) -> None:
        self.producer_config = dict(producer_config)
        self.topic = topic

    def setup(self) -> None:
        self._writer = KafkaBatchWriter(self.producer_config, self.topic, None)
        self._topics = ExperimentTopics(self._writer)
        self._out = Metrics.counter(METRICS_NAMESPACE, "comparisons_out")
        self._dropped = Metrics.counter(METRICS_NAMESPACE, "experiment_records_dropped")

    def start_bundle(self) -> None:
        self._summaries: list[dict] = []

    def process(self, summary: dict) -> Iterable[None]:
        self._summaries.append(summary)
        return ()

    def finish_bundle(self) -> None:
        if not self._summaries:
            return
        if not self._topics.writable(self.topic):
            self._dropped.inc(len(self._summaries))
            return
        values, keys = steps.ExperimentOutput(comparisons=self._summaries).comparison_records()
        self._writer.write(values, keys)
        self._out.inc(len(values))

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
            self._writer = None

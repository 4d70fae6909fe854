"""Reading one Kafka partition from an offset the caller owns (Flink keyed state, a Beam
restriction, a loop variable), in micro-batches."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

START_POSITIONS = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}


@dataclass
class RecordChunk:
    """Raw records of one partition, in offset order."""

    topic: str
    partition: int
    values: list[bytes | None]
    offsets: list[int]

    @property
    def next_offset(self) -> int | None:
        return self.offsets[-1] + 1 if self.offsets else None


class PartitionReader:
    """A consumer assigned to exactly one partition (no group membership, no auto-commit).

    The caller passes the offset it wants to read from on every call; the reader seeks only when
    that differs from where it stands, so the caller's state stays the single source of truth
    (after a restore from a checkpoint, reading simply resumes at the restored offset).
    """

    def __init__(self, consumer_config: dict[str, Any], topic: str, partition: int,
                 start: str = "earliest") -> None:
        if start not in START_POSITIONS:
            raise ValueError(f"start must be one of {sorted(START_POSITIONS)}, not {start!r}")
        self.topic = topic
        self.partition = partition
        self._start = START_POSITIONS[start]
        self._consumer = Consumer(consumer_config)
        self._position: int | None = None   # offset of the next record the consumer will return

    def _assign(self, offset: int) -> None:
        if self._position is not None:
            self._consumer.unassign()
        self._consumer.assign([TopicPartition(self.topic, self.partition, offset)])
        self._position = offset

    def read(self, next_offset: int | None, max_records: int, timeout_s: float) -> RecordChunk:
        """Up to ``max_records`` records from ``next_offset`` (None: the configured start),
        collecting for up to ``timeout_s`` (the call returns early only once ``max_records`` are
        there, so ``timeout_s`` is also the most a record waits here)."""
        wanted = self._start if next_offset is None else next_offset
        if self._position is None or (next_offset is not None and next_offset != self._position):
            self._assign(wanted)
        messages = self._consumer.consume(max_records, timeout_s)
        values: list[bytes | None] = []
        offsets: list[int] = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise RuntimeError(f"fatal Kafka error on {self.topic}/{self.partition}: {err}")
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("Kafka error on %s/%s (retrying): %s", self.topic, self.partition, err)
                continue
            values.append(m.value())
            offsets.append(m.offset())
        if offsets:
            self._position = offsets[-1] + 1
        return RecordChunk(self.topic, self.partition, values, offsets)

    def lag(self) -> int | None:
        """Records between the read position and the partition's end as the broker last reported
        it in a fetch (no request is made); None before the first read or when unknown."""
        if self._position is None or self._position < 0:
            return None
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, self.partition),
                                                              cached=True)
        except KafkaException:
            return None
        return max(0, high - self._position) if high is not None and high >= 0 else None

    def commit(self, next_offset: int, asynchronous: bool = True) -> None:
        """Record ``next_offset`` as the consumer group's position in this partition, for a fresh
        start to resume from (:func:`committed_offsets`); the caller's state stays the authority."""
        self._consumer.commit(offsets=[TopicPartition(self.topic, self.partition, next_offset)],
                              asynchronous=asynchronous)

    def close(self) -> None:
        self._consumer.close()


def committed_offsets(consumer_config: dict[str, Any], topic: str, partitions: list[int],
                      timeout_s: float = 10.0) -> dict[int, int]:
    """The offsets the consumer group (``group.id``) committed for these partitions, by partition
    (partitions without a commit are left out). No group membership is needed."""
    consumer = Consumer(consumer_config)
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found if tp.error is None and tp.offset >= 0}


def record_timestamps(consumer_config: dict[str, Any], topic: str, offsets: dict[int, int],
                      timeout_s: float = 30.0) -> dict[int, int]:
    """The Kafka timestamp (ms; the producer's create time or the broker's append time, as the
    topic is configured) of the record at each ``{partition: offset}``. Raises ``LookupError``
    naming the partitions whose record could not be read within ``timeout_s`` (an offset beyond
    the partition's end, or one the broker no longer keeps)."""
    import time

    found: dict[int, int] = {}
    for partition, offset in offsets.items():
        consumer = Consumer({**consumer_config, "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, partition, offset)])
            deadline = time.monotonic() + timeout_s
            while partition not in found and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                if message.offset() != offset:       # the offset is gone (retention): not that record
                    break
                kind, ts = message.timestamp()
                found[partition] = ts
        finally:
            consumer.close()
    missing = sorted(set(offsets) - set(found))
    if missing:
        raise LookupError(f"{topic}: no record at " + ", ".join(f"partition {p} offset {offsets[p]}" for p in missing)
                          + " (beyond the partition's end, or no longer kept by the broker)")
    return found

"""Writing micro-batches of records (and dead letters) to Kafka, acknowledged before returning."""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from confluent_kafka import KafkaError, Producer

from connectors.dead_letter import DeadLetter

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """The broker did not acknowledge some records; the caller must not treat them as written."""


class KafkaBatchWriter:
    """Produces a batch and waits for the broker's acknowledgement of every record.

    Engines call :meth:`write` once per micro-batch: when it returns, every record of the batch is
    acknowledged, so a checkpoint taken after it can never cover an unwritten record
    (at-least-once). A delivery failure raises, which fails the task and replays from the last
    checkpoint instead of losing records.
    """

    def __init__(self, producer_config: dict[str, Any], topic: str, dead_letter_topic: str | None,
                 flush_timeout_s: float = 60.0) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.flush_timeout_s = flush_timeout_s
        # delivery reports for failed records only (the callback's one job): a successful record
        # then costs no Python call, and produce() no per-call callback argument (~1 us a record)
        self._producer = Producer({**producer_config, "on_delivery": self._on_delivery,
                                   "delivery.report.only.error": True})
        self._errors: list[KafkaError] = []

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self._errors.append(err)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None = None, headers=None) -> None:
        while True:
            try:
                if headers is None:
                    self._producer.produce(topic, value, key)
                else:
                    self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:           # local queue full: let deliveries drain
                self._producer.poll(0.05)

    def write(self, values: Sequence[bytes], keys: Sequence[bytes] | None = None,
              dead_letters: Sequence[DeadLetter] = (),
              extra: Sequence[tuple[str, Sequence[bytes], Sequence[bytes] | None]] = ()) -> None:
        """Produce ``values`` to the topic and ``dead_letters`` to the dead-letter topic (and each
        ``(topic, values, keys)`` of ``extra`` to its topic); return only when all are acknowledged."""
        for topic, extra_values, extra_keys in extra:
            for value, key in zip(extra_values, extra_keys or [None] * len(extra_values)):
                self._produce(topic, value, key)
        if keys is None:
            for value in values:
                self._produce(self.topic, value)
        else:
            for value, key in zip(values, keys):
                self._produce(self.topic, value, key)
        if dead_letters:
            if not self.dead_letter_topic:
                raise DeliveryError(f"{len(dead_letters)} dead letters but no dead-letter topic configured")
            for d in dead_letters:
                self._produce(self.dead_letter_topic, d.value, d.source.encode(), d.headers())
        remaining = self._producer.flush(self.flush_timeout_s)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryError(f"{remaining} records unacknowledged after {self.flush_timeout_s}s, "
                                f"{len(errors)} delivery errors (first: {errors[:1]})")

    def has_topic(self, topic: str, timeout_s: float = 5.0) -> bool:
        """Whether the broker knows ``topic`` (a broker that auto-creates topics creates it now)."""
        try:
            found = self._producer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except Exception:  # noqa: BLE001 - no answer: not known to exist
            return False
        return found is not None and found.error is None and bool(found.partitions)

    def close(self) -> None:
        self._producer.flush(self.flush_timeout_s)


class ExperimentTopics:
    """Which of the shadow and comparison topics can be written: a missing one (a broker that does
    not auto-create topics) drops those records, logged and counted, and is looked for again
    every ``recheck_s``. Shadow output is best effort: it must never fail the served batch
    (the Flink and the Beam Kafka sinks both ask this)."""

    def __init__(self, writer: KafkaBatchWriter, recheck_s: float = 30.0) -> None:
        self._writer = writer
        self._recheck_s = recheck_s
        self._known: dict[str, tuple[bool, float]] = {}

    def writable(self, topic: str) -> bool:
        now = time.monotonic()
        known = self._known.get(topic)
        if known is None or (not known[0] and now - known[1] >= self._recheck_s):
            ok = self._writer.has_topic(topic)
            if not ok:
                log.error("topic %r does not exist: shadow/comparison records for it are dropped (counted in "
                          "experiment_records_dropped) until it does", topic)
            self._known[topic] = (ok, now)
            return ok
        return known[0]

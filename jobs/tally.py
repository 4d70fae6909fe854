"""Reading the prediction and dead-letter topics back and accounting for every input record."""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition

from connectors.dead_letter import REASON_HEADER, SOURCE_HEADER
from connectors.kafka.clients import consumer_config, partitions_of


@dataclass
class Tally:
    """What has come out of the job, keyed by input coordinates ``topic/partition/offset``."""

    predictions: dict[str, dict] = field(default_factory=dict)   # first prediction per input
    dead_letters: dict[str, str] = field(default_factory=dict)   # input → reason
    dead_letter_times: dict[str, float] = field(default_factory=dict)    # input → arrival ms
    duplicate_predictions: int = 0
    duplicate_ids: set[str] = field(default_factory=set)         # inputs predicted more than once
    duplicate_dead_letters: int = 0

    @property
    def accounted(self) -> int:
        return len(self.predictions) + len(self.dead_letters)

    def reasons(self) -> Counter:
        return Counter(self.dead_letters.values())

    def missing(self, inputs: set[str]) -> set[str]:
        return inputs - set(self.predictions) - set(self.dead_letters)

    def latencies_ms(self, inputs: set[str]) -> np.ndarray:
        """Event creation → prediction readable on the output topic, for these inputs."""
        return np.array([p["_arrived_ms"] - p["event_ts"] for k, p in self.predictions.items() if k in inputs])

    def last_arrival_ms(self, inputs: set[str]) -> float | None:
        times = [p["_arrived_ms"] for k, p in self.predictions.items() if k in inputs]
        times += [t for k, t in self.dead_letter_times.items() if k in inputs]
        return max(times) if times else None


class OutputReader:
    """Consumes the prediction and DLQ topics from the beginning in a background thread."""

    def __init__(self, bootstrap_servers: str, output_topic: str, dead_letter_topic: str) -> None:
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(consumer_config(bootstrap_servers, "streamscore-tally"))
        assignment = [TopicPartition(t, p, 0) for t in (output_topic, dead_letter_topic)
                      for p in partitions_of(bootstrap_servers, t)]
        self._consumer.assign(assignment)
        self._output_topic = output_topic
        self._thread = threading.Thread(target=self._run, name="output-reader", daemon=True)

    def start(self) -> "OutputReader":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            # consume() waits until the batch is full or the timeout ends: keep the timeout short so
            # the arrival time we stamp is when the prediction became readable, not a batch later
            messages = self._consumer.consume(1000, 0.002)
            now = time.time() * 1000
            with self._lock:
                for m in messages:
                    if m.error() is None:
                        self._record(m, now)

    def _record(self, m, now_ms: float) -> None:
        t = self.tally
        if m.topic() == self._output_topic:
            p = orjson.loads(m.value())
            key = p["prediction_id"]
            if key in t.predictions:
                t.duplicate_predictions += 1
                t.duplicate_ids.add(key)
                return
            p["_arrived_ms"] = now_ms
            t.predictions[key] = p
        else:
            headers = dict(m.headers() or [])
            key = headers.get(SOURCE_HEADER, b"?").decode()
            if key in t.dead_letters:
                t.duplicate_dead_letters += 1
                return
            t.dead_letters[key] = headers.get(REASON_HEADER, b"?").decode()
            t.dead_letter_times[key] = now_ms

    def snapshot(self) -> Tally:
        with self._lock:
            t = self.tally
            return Tally(dict(t.predictions), dict(t.dead_letters), dict(t.dead_letter_times),
                         t.duplicate_predictions, set(t.duplicate_ids), t.duplicate_dead_letters)

    def wait_for(self, inputs: set[str], timeout_s: float, stall_s: float = 60.0, on_progress=None,
                 check=None) -> Tally:
        """Wait until every input is accounted for, or until ``timeout_s`` / no progress for ``stall_s``."""
        deadline = time.monotonic() + timeout_s
        last_count, last_change = -1, time.monotonic()
        while True:
            snap = self.snapshot()
            done = len(inputs & (set(snap.predictions) | set(snap.dead_letters)))
            if on_progress:
                on_progress(snap, done)
            if done >= len(inputs):
                return snap
            if done != last_count:
                last_count, last_change = done, time.monotonic()
            if time.monotonic() > deadline or time.monotonic() - last_change > stall_s:
                return snap
            if check:
                check()
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()

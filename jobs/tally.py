"""Reading the prediction and dead-letter topics back and accounting for every input record."""
from __future__ import annotations

import multiprocessing
import os
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
    duplicate_ids: set[str] = field(default_factory=set)         # inputs with more than one output record
    duplicate_dead_letters: int = 0

    @property
    def accounted(self) -> int:
        return len(self.predictions) + len(self.dead_letters)

    def reasons(self) -> Counter:
        return Counter(self.dead_letters.values())

    def missing(self, inputs: set[str]) -> set[str]:
        return inputs - set(self.predictions) - set(self.dead_letters)

    def per_version(self, inputs: set[str]) -> dict[str, int]:
        """Predictions of ``inputs`` per ``model_version`` that scored them."""
        counts = Counter(self.predictions[c].get("model_version") for c in inputs if c in self.predictions)
        return dict(sorted(counts.items(), key=lambda kv: (len(str(kv[0])), str(kv[0]))))

    def version_switches(self, inputs: set[str]) -> dict[str, list[tuple[int, str, str]]]:
        """Per input partition (``topic/partition``), in offset order, every change of the model
        version that scored consecutive predictions: ``(offset, from, to)``. One promotion seen
        once per partition is one entry; flapping shows as more."""
        by_partition: dict[str, list[tuple[int, str]]] = {}
        for coord in inputs:
            prediction = self.predictions.get(coord)
            if prediction is not None:
                partition, _, offset = coord.rpartition("/")
                by_partition.setdefault(partition, []).append((int(offset), prediction.get("model_version")))
        switches = {}
        for partition, scored in sorted(by_partition.items()):
            scored.sort()
            switches[partition] = [(offset, before, after) for (_, before), (offset, after) in zip(scored, scored[1:])
                                   if before != after]
        return switches

    def latencies_ms(self, inputs: set[str]) -> np.ndarray:
        """Event creation → prediction read from the output topic, for these inputs. Each
        prediction also carries ``_produced_ms`` (its Kafka record timestamp: when the job
        handed it to its producer) and ``_arrived_ms`` (when this reader got it)."""
        return np.array([p["_arrived_ms"] - p["event_ts"] for k, p in self.predictions.items() if k in inputs])

    def last_arrival_ms(self, inputs: set[str]) -> float | None:
        times = [p["_arrived_ms"] for k, p in self.predictions.items() if k in inputs]
        times += [t for k, t in self.dead_letter_times.items() if k in inputs]
        return max(times) if times else None


def _read(consumer: Consumer) -> tuple[float, list[tuple]]:
    """One consume call: (arrival time ms, [(topic, value, headers, record timestamp ms)])."""
    # consume() waits until the batch is full or the timeout ends: keep the timeout short so the
    # arrival time we stamp is when the record became readable, not a batch later
    messages = consumer.consume(1000, 0.002)
    now = time.time() * 1000
    return now, [(m.topic(), m.value(), m.headers(), m.timestamp()[1]) for m in messages if m.error() is None]


def _stamp_arrivals(config: dict, assignment: list[tuple[str, int]], conn, stop, parent: int) -> None:
    """The child process of an isolated OutputReader: consume, stamp, forward to the parent."""
    consumer = Consumer(config)
    consumer.assign([TopicPartition(t, p, 0) for t, p in assignment])
    try:
        while not stop.is_set() and os.getppid() == parent:
            now, records = _read(consumer)
            if records:
                conn.send((now, records))
    finally:
        consumer.close()
        conn.close()


class OutputReader:
    """Consumes the prediction and DLQ topics from the beginning in a background thread.

    ``isolated``: consume and stamp arrival times in a child process that does nothing else, so
    the stamps never wait for this process's GIL or garbage collector (for latency benchmarks;
    the child takes ~1 s to start)."""

    def __init__(self, bootstrap_servers: str, output_topic: str, dead_letter_topic: str,
                 consumer: dict | None = None, isolated: bool = False) -> None:
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._arrived: list[str] = []     # inputs in the order their first output arrived
        config = consumer_config(bootstrap_servers, "streamscore-tally", consumer)
        assignment = [(t, p) for t in (output_topic, dead_letter_topic) for p in partitions_of(bootstrap_servers, t)]
        self._output_topic = output_topic
        self._consumer = self._child = None
        if isolated:
            ctx = multiprocessing.get_context("spawn")
            self._conn, child_conn = ctx.Pipe(duplex=False)
            self._child_stop = ctx.Event()
            self._child = ctx.Process(target=_stamp_arrivals, name="output-reader",
                                      args=(config, assignment, child_conn, self._child_stop, os.getpid()), daemon=True)
        else:
            self._consumer = Consumer(config)
            self._consumer.assign([TopicPartition(t, p, 0) for t, p in assignment])
        self._thread = threading.Thread(target=self._run, name="output-reader", daemon=True)

    def start(self) -> "OutputReader":
        if self._child is not None:
            self._child.start()
        self._thread.start()
        return self

    def _next(self) -> tuple[float, list[tuple]]:
        if self._consumer is not None:
            return _read(self._consumer)
        if self._conn.poll(0.05):
            try:
                return self._conn.recv()
            except EOFError:      # the child has stopped
                self._stop.wait(0.05)
        return 0.0, []

    def _run(self) -> None:
        while not self._stop.is_set():
            now, records = self._next()
            with self._lock:
                for record in records:
                    self._record(*record, now)

    def _record(self, topic: str, value: bytes, headers, produced_ms: int, now_ms: float) -> None:
        t = self.tally
        if topic == self._output_topic:
            p = orjson.loads(value)
            key = p["prediction_id"]
            if key in t.predictions:
                t.duplicate_predictions += 1
                t.duplicate_ids.add(key)
                return
            p["_arrived_ms"] = now_ms
            p["_produced_ms"] = produced_ms
            t.predictions[key] = p
        else:
            headers = dict(headers or [])
            key = headers.get(SOURCE_HEADER, b"?").decode()
            if key in t.dead_letters:
                t.duplicate_dead_letters += 1
                t.duplicate_ids.add(key)
                return
            t.dead_letters[key] = headers.get(REASON_HEADER, b"?").decode()
            t.dead_letter_times[key] = now_ms
        self._arrived.append(key)

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
        remaining, seen = set(inputs), 0
        while True:
            with self._lock:       # only what arrived since the last look: cheap, however long the run
                new = self._arrived[seen:]
            seen += len(new)
            remaining.difference_update(new)
            done = len(inputs) - len(remaining)
            if on_progress:
                on_progress(self.snapshot(), done)
            if done != last_count:
                last_count, last_change = done, time.monotonic()
            if not remaining or time.monotonic() > deadline or time.monotonic() - last_change > stall_s:
                return self.snapshot()
            if check:
                check()
            time.sleep(0.1)

    def stop(self) -> None:
        if self._child is not None:
            self._child_stop.set()
            self._child.join(timeout=10)
            if self._child.is_alive():
                self._child.kill()
        self._stop.set()
        self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()

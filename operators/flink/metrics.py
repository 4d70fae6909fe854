"""Flink metrics that work from every thread of a PyFlink Python worker, and the sinks' counters.

PyFlink (process mode) records a metric update through Beam's *per-thread* state sampler and
silently drops updates made on any other thread. The async I/O operator runs ``async_invoke`` on
an event-loop thread and hands its results to the operators chained after it on an emitter
thread, so enrichment, scoring and sink metrics never reached Flink. The metrics here bind to a
metrics container of the worker's main thread (the first one an update sees), which the worker
reports to Flink at the end of every bundle; the async operator finishes its in-flight elements
before a bundle ends, so no update falls between report and reset.

Latency distributions also publish ``<name>_p50|p95|p99`` gauges over the last samples: Flink
shows a Python distribution as a text value the Prometheus reporter cannot export.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from apache_beam.metrics.execution import MetricsEnvironment
from apache_beam.metrics.metricbase import MetricName
from pyflink.datastream.functions import RuntimeContext

from operators.flink.worker import PROCESS

QUANTILES = (50, 95, 99)


def _container():
    """The calling thread's metrics container, or off the main thread the worker process's
    main-thread container (``worker.PROCESS``), once an update on the main thread made it known."""
    current = MetricsEnvironment.current_container()
    if current is None:
        return PROCESS.main_metrics_container
    if PROCESS.main_metrics_container is None:
        PROCESS.main_metrics_container = current
    return current


class Counter:
    """A counter safe to increment from any thread of the worker."""

    def __init__(self, name: MetricName) -> None:
        self._name = name
        self._cell = None
        self._pending = 0           # increments before any container was known
        self._lock = threading.Lock()

    def inc(self, n: int = 1) -> None:
        cell = self._cell
        if cell is None:
            with self._lock:
                container = _container()
                if container is None:
                    self._pending += n
                    return
                cell = self._cell = container.get_counter(self._name)
                n, self._pending = n + self._pending, 0
        cell.inc(n)


class Meter:
    """Events per second (Flink's MeterView over ``time_span_s``), safe to mark from any thread.

    PyFlink's process mode sends a meter to Flink as a counter whose namespace carries the time
    span; Flink turns it into a rate (``<name>`` in REST, ``..._<name>`` in Prometheus)."""

    def __init__(self, name: MetricName) -> None:
        self._counter = Counter(name)

    def mark_event(self, n: int = 1) -> None:
        self._counter.inc(n)


class Distribution:
    """A distribution (count/sum/min/max in Flink) plus recent-quantile gauges."""

    def __init__(self, name: MetricName, group, window: int = 1024, refresh_s: float = 1.0) -> None:
        self._name = name
        self._cell = None
        self._recent = np.zeros(window, dtype=np.float64)
        self._seen = 0
        self._refresh_s = refresh_s
        self._quantiles: dict[int, int] = {q: 0 for q in QUANTILES}
        self._computed_at = 0.0
        for q in QUANTILES:
            group.gauge(f"{name.name}_p{q}", lambda q=q: self._quantile(q))

    def update(self, value: float) -> None:
        self._recent[self._seen % len(self._recent)] = value
        self._seen += 1
        cell = self._cell
        if cell is None:
            container = _container()
            if container is None:
                return
            cell = self._cell = container.get_distribution(self._name)
        cell.update(int(value))

    def _quantile(self, q: int) -> int:
        now = time.monotonic()
        if now - self._computed_at >= self._refresh_s and self._seen:
            recent = self._recent[: min(self._seen, len(self._recent))]
            values = np.percentile(recent, QUANTILES)
            self._quantiles = {k: int(round(v)) for k, v in zip(QUANTILES, values)}
            self._computed_at = now
        return self._quantiles[q]


class MetricGroup:
    """``ctx.get_metrics_group()`` with thread-safe counters and distributions."""

    def __init__(self, group) -> None:
        self._group = group
        self._namespace = group._get_namespace()     # how PyFlink names the group to Flink

    def counter(self, name: str) -> Counter:
        return Counter(MetricName(self._namespace, name))

    def distribution(self, name: str) -> Distribution:
        return Distribution(MetricName(self._namespace, name), self._group)

    def meter(self, name: str, time_span_s: int = 10) -> Meter:
        return Meter(MetricName(self._group._get_namespace(time_span_s), name))

    def gauge(self, name: str, read) -> None:
        """A value Flink reads at the end of each bundle (``read()`` returns an int)."""
        self._group.gauge(name, read)

    def add_group(self, name: str) -> "MetricGroup":
        return MetricGroup(self._group.add_group(name))


def metric_group(ctx: RuntimeContext) -> MetricGroup:
    """The operator's metric group (use instead of ``ctx.get_metrics_group()``)."""
    return MetricGroup(ctx.get_metrics_group())


class OutputMetrics:
    """What every sink counts: ``predictions_out``, ``dead_letters_out`` and
    ``dead_letters.<reason>``, plus the rate meter ``predictions_per_s``."""

    def __init__(self, group: MetricGroup) -> None:
        self._group = group
        self._predictions = group.counter("predictions_out")
        self._predictions_per_s = group.meter("predictions_per_s")
        self._dead = group.counter("dead_letters_out")
        self._by_reason: dict[str, Any] = {}

    def count(self, predictions: int, dead_letters) -> None:
        self._predictions.inc(predictions)
        self._predictions_per_s.mark_event(predictions)
        self._dead.inc(len(dead_letters))
        for letter in dead_letters:
            counter = self._by_reason.get(letter.reason)
            if counter is None:
                counter = self._by_reason[letter.reason] = self._group.add_group("dead_letters").counter(letter.reason)
            counter.inc()

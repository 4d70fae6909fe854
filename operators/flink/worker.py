"""The PyFlink Python worker process: its process-wide settings and state, in one place.

PyFlink starts its Python workers itself (``pyflink.fn_execution.beam.beam_boot``, or inside the
job's own process on a local MiniCluster) and offers no hook where a worker process starts. So:

* the job's entry point (``jobs.score_stream.main``, ``streamscore run``) calls
  :func:`prepare_process` for its own process, which runs the operators on a local MiniCluster;
* the one operator that needs a setting (the Kafka poller) is given the :class:`WorkerSettings`
  and calls :func:`prepare_process` in its ``open()``: applied once per process, an error if
  two operators of one process ask for different settings;
* the metrics container of the worker's main thread (see ``operators.flink.metrics``) is state
  of the process by nature: it lives here, as :data:`PROCESS`, and nowhere else.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerSettings:
    """Process settings of a Python worker.

    ``gil_switch_interval_s``: the worker runs the Kafka poller, the async lookup's event loop and
    the emitter thread that scores and writes. At Python's default switch interval (5 ms) every
    hand-off between them (and every return from a blocking Kafka/Plasma call) can wait up to
    5 ms for the GIL."""

    gil_switch_interval_s: float = 0.0005


class WorkerProcess:
    """What one worker process holds for all its operators."""

    def __init__(self) -> None:
        self.settings: WorkerSettings | None = None
        self.main_metrics_container: Any = None     # set by the first metric update on the main thread
        self._lock = threading.Lock()

    def prepare(self, settings: WorkerSettings) -> None:
        with self._lock:
            if self.settings == settings:
                return
            if self.settings is not None:
                raise RuntimeError(f"worker process already runs with {self.settings}, not {settings}")
            sys.setswitchinterval(settings.gil_switch_interval_s)
            self.settings = settings


PROCESS = WorkerProcess()


def prepare_process(settings: WorkerSettings) -> None:
    """Apply ``settings`` to this process, once (idempotent for equal settings)."""
    PROCESS.prepare(settings)

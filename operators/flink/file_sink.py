"""File sink: predictions (and dead letters) as exactly-once rolling Parquet / JSON-lines files.

PyFlink gives Python functions no checkpoint callbacks (no ``snapshotState`` or
``notifyCheckpointComplete``), but it finishes the Python bundle before every checkpoint barrier
and checkpoints keyed state. That is enough for :mod:`connectors.files`: keyed by source
partition, the operator stages each micro-batch durably before returning, keeps the small
writer state (staging segment names and lengths) in Flink keyed state, and commits files by
atomic rename whenever a roll condition holds. After a restore, the committed file names fence
off replayed rows, so every prediction lands in exactly one committed file.

Datasets below ``sink.path``: ``predictions/`` (the served output), ``dead_letters/`` and, when the
job runs shadows, ``shadow/`` (every shadow's predictions, tagged with ``role`` and
``model_version``; never in ``predictions/``), each with its own writer per source partition.
"""
from __future__ import annotations

import logging
import time

from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from connectors.events import OFFSET_COLUMN
from connectors.files import CommittedIndex, FileTarget, RollingFileWriter, dead_letter_rows
from operators import steps
from operators.flink import discard
from operators.flink.metrics import OutputMetrics, metric_group

log = logging.getLogger(__name__)

PREDICTIONS, DEAD_LETTERS, SHADOW = "predictions", "dead_letters", "shadow"


def writer_id(scored: steps.ScoredBatch) -> str:
    """The key: one writer per source topic partition (its offsets fence replays)."""
    return f"{scored.batch.topic}-{scored.batch.partition}"


class WriteFiles(KeyedProcessFunction):
    """Keyed by :func:`writer_id`: writes each scored micro-batch's predictions (and dead
    letters, and its shadows' predictions) through a :class:`RollingFileWriter` per dataset. A
    batch's shadow rows are written in one write (the rows of every shadow of an input share its
    offset, the writer's sequence number), so the fence keeps them exactly once too."""

    def __init__(self, targets: dict[str, FileTarget]) -> None:
        self.targets = targets

    def open(self, ctx: RuntimeContext) -> None:
        self._state = ctx.get_state(ValueStateDescriptor("file-writers", Types.PICKLED_BYTE_ARRAY()))
        self._indexes = {name: CommittedIndex(t) for name, t in self.targets.items()}
        self._writers: dict[str, dict[str, RollingFileWriter]] = {}
        self._timers: dict[str, int] = {}
        metrics = metric_group(ctx)
        self._outputs = OutputMetrics(metrics)
        self._files = metrics.counter("files_committed")
        self._rows = metrics.counter("rows_committed")
        self._skipped = metrics.counter("rows_already_committed")
        self._commit_ms = metrics.distribution("file_commit_ms")
        self._shadow_rows = metrics.counter("shadow_rows_staged")

    def _writers_for(self, key: str) -> dict[str, RollingFileWriter]:
        writers = self._writers.get(key)
        if writers is None:
            state = self._state.value() or {}      # the restored checkpoint's, on the first touch
            writers = self._writers[key] = {
                name: RollingFileWriter(target, key, state.get(name), self._indexes[name])
                for name, target in self.targets.items()}
        return writers

    def process_element(self, scored: steps.ScoredBatch, ctx: KeyedProcessFunction.Context):
        key = ctx.get_current_key()
        writers = self._writers_for(key)
        now = time.time()
        predictions = scored.predictions
        commits = []
        if predictions.num_rows:
            offsets = scored.batch.events.column(OFFSET_COLUMN).to_numpy()
            commits += writers[PREDICTIONS].write(predictions, offsets, now)
        if scored.dead_letters and DEAD_LETTERS in writers:
            commits += writers[DEAD_LETTERS].write(*dead_letter_rows(scored.dead_letters), now)
        if scored.experiment is not None and SHADOW in writers:
            shadow_rows, shadow_offsets = scored.experiment.shadow_rows()
            if shadow_rows is not None:
                commits += writers[SHADOW].write(shadow_rows, shadow_offsets, now)
                self._shadow_rows.inc(shadow_rows.num_rows)
        self._outputs.count(predictions.num_rows, scored.dead_letters)
        self._after(key, writers, commits, ctx)
        yield predictions.num_rows + len(scored.dead_letters)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        key = ctx.get_current_key()
        self._timers.pop(key, None)
        writers = self._writers_for(key)
        now = time.time()
        commits = [c for w in writers.values() for c in w.roll_if_due(now)]
        self._after(key, writers, commits, ctx)
        yield from ()                    # PyFlink iterates what on_timer returns

    def _after(self, key: str, writers: dict[str, RollingFileWriter], commits, ctx) -> None:
        """Record commits, store the writers' state, and arm a timer for the oldest open file."""
        for c in commits:
            self._files.inc()
            self._rows.inc(c.rows)
            self._commit_ms.update(c.seconds * 1000)
        skipped = sum(w.rows_skipped for w in writers.values())
        if skipped:
            self._skipped.inc(skipped)
            for w in writers.values():
                w.rows_skipped = 0
        self._state.update({name: w.state() for name, w in writers.items()})
        opened = [w.open_since for w in writers.values() if w.has_open_file]
        if opened and key not in self._timers:
            due_ms = int((min(opened) + min(t.roll_interval_s for t in self.targets.values())) * 1000) + 1
            ctx.timer_service().register_processing_time_timer(due_ms)
            self._timers[key] = due_ms

    def close(self) -> None:
        # committing here is safe at any time (the fence); it makes a stopped job's output complete
        for key, writers in getattr(self, "_writers", {}).items():
            for w in writers.values():
                try:
                    w.close(commit=True)
                except Exception:  # noqa: BLE001 - a failing filesystem must not mask the job's own error
                    log.exception("could not commit the open file of %s on close", key)


def file_targets(path: str, fmt: str, partitioning: str, roll_bytes: int, roll_interval_s: float,
                 include_dead_letters: bool, include_shadow: bool = False) -> dict[str, FileTarget]:
    """``<path>/predictions`` (and ``<path>/dead_letters``, and ``<path>/shadow`` for a job with
    shadows) with one write policy."""
    names = [PREDICTIONS] + ([DEAD_LETTERS] if include_dead_letters else []) + ([SHADOW] if include_shadow else [])
    base, sep, options = path.partition("?")             # e.g. s3://b/p?endpoint_override=...
    return {name: FileTarget(f"{base.rstrip('/')}/{name}{sep}{options}", fmt, partitioning, roll_bytes,
                             roll_interval_s) for name in names}


def write_to_files(stream: DataStream, targets: dict[str, FileTarget]):
    """Write scored micro-batches to ``targets`` (see :func:`file_targets`)."""
    written = (stream.key_by(writer_id, Types.STRING())
               .process(WriteFiles(targets), Types.INT())
               .name("files").uid("file-sink"))
    return discard(written)


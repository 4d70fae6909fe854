"""No process-wide side effects in operators or connectors: process settings are made once where
the process starts (``operators.flink.worker``, the jobs' entry points); operators get what they
need passed in."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

from connectors.feature_store import load_table
from feature_store_fixtures import feature_table, short_tmpdir
from operators.flink.worker import WorkerProcess, WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
PROCESS_WIDE = re.compile(r"sys\.setswitchinterval|os\.environ\[[^]]+\]\s*=|os\.environ\.(setdefault|update)|"
                          r"\.setLevel\(|logging\.basicConfig|sys\.unraisablehook\s*=")
ALLOWED = {  # where a process-wide setting belongs, and why
    "operators/flink/worker.py": "the worker process's settings, once per process",
    "jobs/score_stream.py": "the job process's entry point",
    "jobs/beam_score.py": "the Beam job process's entry point (logging)",
    "connectors/feature_store/shm_reader.py": "quiet_release: a scoped hook, restored on exit",
}


def test_operators_and_connectors_make_no_process_wide_settings():
    offenders = []
    for folder in ("operators", "connectors", "model_formats"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if PROCESS_WIDE.search(line):
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "process-wide settings outside the process entry points:\n" + "\n".join(offenders)


def test_worker_settings_apply_once_per_process_and_conflicts_are_refused():
    before = sys.getswitchinterval()
    worker = WorkerProcess()
    try:
        worker.prepare(WorkerSettings(gil_switch_interval_s=0.001))
        assert sys.getswitchinterval() == pytest.approx(0.001)
        worker.prepare(WorkerSettings(gil_switch_interval_s=0.001))     # again: nothing to do
        with pytest.raises(RuntimeError, match="already runs with"):
            worker.prepare(WorkerSettings(gil_switch_interval_s=0.002))
    finally:
        sys.setswitchinterval(before)


def test_loading_a_table_leaves_every_logger_as_it_was():
    levels = {name: logging.getLogger(name).level for name in ("streamscore", "streamscore.feature_store", "")}
    d = short_tmpdir()
    load_table(f"arrow-shm://{d}/fs", feature_table(10), key="entity_id")   # a new store: nothing served yet
    load_table(f"arrow-shm://{d}/fs", feature_table(10), key="entity_id")
    assert {name: logging.getLogger(name).level for name in levels} == levels

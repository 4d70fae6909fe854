"""`streamscore run` on this machine: checks, then the job in its own process (a Flink
MiniCluster), watched from its REST API with a live status line.

The console says what is happening while the job starts (JVM, submission, tasks, first
scores), prints the Flink Web UI URL, echoes model reloads, refusals and restarts from the
logs, and stops the job the same way on Ctrl-C and SIGTERM (its whole process group: client,
JVM, Python workers). Logs go to a folder of the user's (``--log-dir``), not site-packages.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from jobs.config import JobConfig
from jobs.errors import UserError

DEFAULT_LOG_DIR = "streamscore-logs"
# The MiniCluster's REST endpoint (Web UI) binds to the first free port of this range (below the
# ephemeral ports); JobProcess.rest() finds which one from /proc, so two jobs never race for one.
DEFAULT_REST_PORTS = "8081-8199"
# Start-up stages worth saying, from the logs (once each).
_STAGES = [(re.compile(r"Still waiting for startup of environment"), "waiting for the Python workers to start…"),
           (re.compile(r"Completed checkpoint \d+ for job"), "first checkpoint completed")]
# Log lines worth a console line: model swaps and refusals (model_formats.reloading), restarts.
_ECHO = re.compile(r"(restoring from .*|model .* replaced: now .*|model .* is refused .*|switched from \w+ to (?:RESTARTING|FAILED).*)")


def log_dir_for(option: str | None) -> Path:
    """``--log-dir``, else $STREAMSCORE_LOG_DIR, else ./streamscore-logs (created)."""
    path = Path(option or os.environ.get("STREAMSCORE_LOG_DIR") or DEFAULT_LOG_DIR).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Status:
    """One reading of the job's metrics (totals since start, summed over subtasks)."""

    at: float
    state: str = "?"
    records_in: float = 0
    predictions: float = 0
    dead_letters: float = 0
    reasons: dict[str, float] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    lag: float | None = None
    restarts: int = 0

    def line(self, previous: "Status | None") -> str:
        dt = (self.at - previous.at) if previous else 0
        rate = (lambda now, before: (now - before) / dt if dt > 0 else 0.0)
        in_s = rate(self.records_in, previous.records_in) if previous else 0.0
        out_s = rate(self.predictions, previous.predictions) if previous else 0.0
        reasons = ", ".join(f"{r} {n:,.0f}" for r, n in sorted(self.reasons.items()) if n)
        parts = [self.state, f"in {in_s:,.0f} ev/s ({self.records_in:,.0f})",
                 f"predictions {out_s:,.0f}/s ({self.predictions:,.0f})",
                 f"dead letters {self.dead_letters:,.0f}" + (f" ({reasons})" if reasons else "")]
        if self.p50_ms is not None:
            parts.append(f"p50 {self.p50_ms:,.0f} ms p99 {self.p99_ms:,.0f} ms")
        if self.lag is not None:
            parts.append(f"lag {self.lag:,.0f}")
        parts.append(f"restarts {self.restarts}")
        return " · ".join(parts)


_COUNTERS = re.compile(r"\.(records_in|predictions_out|dead_letters_out|dead_letters\.(\w+))$")
_GAUGES = re.compile(r"\.(poll_to_ack_ms_p50|poll_to_ack_ms_p99|records_lag)$")


def read_status(rest, job_id: str) -> Status:
    """The job's state and its counters from the REST API."""
    status = Status(at=time.monotonic(), state=rest.job_state(job_id))
    try:
        status.restarts = rest.restarts(job_id)
    except (OSError, ValueError, KeyError, IndexError):
        pass
    for metrics in rest.vertex_metrics(job_id, lambda m: bool(_COUNTERS.search(m))).values():
        for metric_id, value in metrics.items():
            m = _COUNTERS.search(metric_id)
            if m.group(2):
                status.reasons[m.group(2)] = status.reasons.get(m.group(2), 0) + value
            elif m.group(1) == "records_in":
                status.records_in += value
            elif m.group(1) == "predictions_out":
                status.predictions += value
            else:
                status.dead_letters += value
    for metrics in rest.vertex_metrics(job_id, lambda m: bool(_GAUGES.search(m)), agg="max").values():
        for metric_id, value in metrics.items():
            name = _GAUGES.search(metric_id).group(1)
            if name == "records_lag":
                status.lag = (status.lag or 0) + value
            elif name.endswith("p50"):
                status.p50_ms = max(status.p50_ms or 0, value)
            else:
                status.p99_ms = max(status.p99_ms or 0, value)
    return status


class LogTail:
    """New lines of every ``*.log`` file in a folder since the last call."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._offsets: dict[Path, int] = {}

    def new_lines(self) -> list[str]:
        lines = []
        for path in sorted(self.folder.glob("*.log")):
            start = self._offsets.get(path, 0)
            try:
                size = path.stat().st_size
                if size < start:          # truncated (a new run rewrote it)
                    start = 0
                if size == start:
                    continue
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read(size - start)
            except OSError:
                continue
            complete = chunk.rfind(b"\n") + 1
            self._offsets[path] = start + complete
            lines.extend(chunk[:complete].decode("utf-8", "replace").splitlines())
        return lines


def last_error(lines: list[str]) -> str | None:
    """The most telling error line of a failed job's log (its root cause, if logged)."""
    causes = [ln for ln in lines if re.search(r"(Error|Exception)\b.*:", ln) and "at " != ln.strip()[:3]]
    for line in reversed(causes):
        if "Caused by:" in line:
            return line.split("Caused by:", 1)[1].strip()
    return causes[-1].strip() if causes else None


class _Stop(Exception):
    """SIGTERM, turned into the same path as Ctrl-C."""


def run_locally(cfg: JobConfig, *, log_dir: Path, status_interval_s: float = 2.0, checks: bool = True,
                say: Callable[[str], None] | None = None, status: Callable[[str], None] | None = None,
                first_status_timeout_s: float = 600.0) -> int:
    """Check, start the job in its own process group, watch it until it ends or is stopped.
    Returns the exit code (0 stopped by the user, 1 the job failed)."""
    from jobs.preflight import preflight
    from jobs.processes import JobProcess

    say = say or _say
    status = status or status_printer()
    started = time.monotonic()
    if checks:
        preflight(cfg, say)
    conf = cfg.flink.conf
    if not {"rest.port", "rest.bind-port"} & set(conf):
        conf.update({"rest.bind-port": DEFAULT_REST_PORTS, "rest.address": "127.0.0.1",
                     "rest.bind-address": "127.0.0.1"})
    config_path = cfg.to_yaml(log_dir / "job.yaml")
    for old in log_dir.glob("flink-*.log"):        # the JVM log of an earlier run
        old.unlink(missing_ok=True)
    job = JobProcess(config_path, log_dir / "job.log", cwd=Path.cwd(), env={"FLINK_LOG_DIR": str(log_dir)})
    tail = LogTail(log_dir)
    tail.new_lines()                               # skip what earlier runs wrote
    previous_handler = signal.signal(signal.SIGTERM, _raise_stop)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)   # even where a shell ignored it
    say(f"starting the job {cfg.job_name} in a local Flink MiniCluster (JVM, then Python workers); "
        f"logs in {log_dir}")
    job.start()
    rest = None
    job_id = None
    last: Status | None = None
    announced = set()
    try:
        while True:
            time.sleep(0.5 if job_id is None else min(status_interval_s, 0.5))
            lines = tail.new_lines()
            for line in lines:
                for pattern, text in _STAGES:
                    if text not in announced and pattern.search(line):
                        announced.add(text)
                        say(text)
                echo = _ECHO.search(line)
                if echo:
                    say(f"  {echo.group(1).strip()[:300]}")
            if not job.is_running():
                cause = last_error(lines + job.log_tail(200).splitlines())
                raise UserError(f"the job exited (code {job._proc.returncode})"
                                + (f": {cause[:400]}" if cause else "") + f"; log: {job.log_path}")
            if rest is None:
                rest = _find_rest(job, conf)
                if rest is not None:
                    say(f"Flink Web UI: {rest.url}  (after {time.monotonic() - started:.1f} s)")
                elif time.monotonic() - started > first_status_timeout_s:
                    raise UserError(f"the job's REST API did not come up within {first_status_timeout_s:.0f} s; "
                                    f"log: {job.log_path}")
                continue
            try:
                if job_id is None:
                    jobs = rest.get("/jobs/overview")["jobs"]
                    if not jobs:
                        continue
                    job_id = jobs[0]["jid"]
                    say(f"job submitted (id {job_id}); starting its tasks, Python workers and the model…")
                now = read_status(rest, job_id)
            except (OSError, ValueError, KeyError):
                continue                  # REST busy or restarting: try again next tick
            if now.state == "RUNNING" and "running" not in announced:
                announced.add("running")
                say(f"job RUNNING after {time.monotonic() - started:.1f} s; waiting for the first events")
            if now.predictions + now.dead_letters > 0 and "scored" not in announced:
                announced.add("scored")
                say(f"first events scored after {time.monotonic() - started:.1f} s")
            if last and now.restarts > last.restarts:
                say(f"  the job restarted ({now.restarts} so far; restart-strategy attempts "
                    f"{cfg.flink.restart_attempts}): {(last_error(lines) or 'see the log')[:300]}")
            if now.state in ("FAILED", "CANCELED", "FINISHED"):
                status(now.line(last))
                if now.state == "FAILED":
                    cause = last_error(lines + job.log_tail(200).splitlines())
                    raise UserError(f"the job FAILED: {(cause or 'see the log')[:400]}; log: {job.log_path}")
                return 0
            if last is None or now.at - last.at >= status_interval_s:
                status(now.line(last))
                last = now
    except (KeyboardInterrupt, _Stop) as exc:
        say(f"stopping the job ({'SIGTERM' if isinstance(exc, _Stop) else 'Ctrl-C'}): "
            "state is kept in checkpoints; resume with --restore latest")
        job.stop(grace_s=10.0)
        say("stopped")
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    finally:
        job.stop(grace_s=10.0)
        signal.signal(signal.SIGTERM, previous_handler)
        signal.signal(signal.SIGINT, previous_int)


def _find_rest(job, conf: dict):
    """The job's REST API once it listens (None before)."""
    from jobs.flink_rest import FlinkRest

    if "rest.bind-port" not in conf:               # the user fixed rest.port
        rest = FlinkRest(f"http://{conf.get('rest.address', '127.0.0.1')}:{conf['rest.port']}", timeout_s=10.0)
        return rest if rest.is_up() else None
    try:
        found = job.rest(timeout_s=0.2)
    except RuntimeError:
        return None
    found.timeout_s = 10.0        # a status tick should not hang on a busy machine
    return found


def _say(text: str) -> None:
    """A console line (clearing a status line a terminal shows in place)."""
    sys.stderr.write(("\r\x1b[2K" if sys.stderr.isatty() else "") + text + "\n")
    sys.stderr.flush()


def _raise_stop(signum, frame) -> None:
    raise _Stop()


def status_printer(quiet_repeat_s: float = 60.0) -> Callable[[str], None]:
    """Rewrites one line on a terminal. Elsewhere (logs, pipes) prints a line per change, and an
    unchanged line again only after ``quiet_repeat_s``, so an idle job does not flood its log."""
    tty = sys.stderr.isatty()
    last = {"text": None, "at": 0.0}

    def show(text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if tty:
            sys.stderr.write(f"\r\x1b[2K{stamp} {text}")
        elif text != last["text"] or time.monotonic() - last["at"] >= quiet_repeat_s:
            sys.stderr.write(f"{stamp} status: {text}\n")
            last.update(text=text, at=time.monotonic())
        sys.stderr.flush()
    return show

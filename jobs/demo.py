"""The demo: the scoring job end to end on embedded defaults, with a live progress line, a
summary table, and one JSON object as the very last line."""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from jobs import demo_data
from jobs.embedded import EmbeddedStack
from jobs.flink_rest import FlinkRest
from jobs.producer import produce
from jobs.tally import Tally


@dataclass
class DemoOptions:
    events: int = 20_000
    rate: float = 5000.0          # events/s produced; 0 = as fast as possible
    entities: int = 100_000
    partitions: int = 2
    parallelism: int = 1
    bad_fraction: float = 0.01    # share of malformed / unknown-entity events (dead-lettered)
    timeout_s: float = 900.0
    workdir: Path | None = None
    broker: str = "tansu"         # embedded broker: tansu | kafka (Apache Kafka)


def demo_records(opts: DemoOptions) -> list[dict | bytes]:
    """Good events with a sprinkling of each kind of bad event."""
    return demo_records_with_reasons(opts)[0]


def demo_records_with_reasons(opts: DemoOptions) -> tuple[list[dict | bytes], dict[int, str]]:
    """:func:`demo_records` and, per position of a bad event, the dead-letter reason it must get."""
    events = list(demo_data.events(opts.events, opts.entities))
    every = int(1 / opts.bad_fraction) if opts.bad_fraction > 0 else 0
    if not every:
        return events, {}
    return demo_data.with_bad_events(events, opts.entities, every=every, start=every // 2)


def summarize(tally: Tally, inputs: list[str], started: float, opts: DemoOptions) -> dict:
    wanted = set(inputs)
    lat = tally.latencies_ms(wanted)
    last = tally.last_arrival_ms(wanted)
    elapsed_s = last / 1000.0 - started if last else 0.0
    predicted = len(wanted & set(tally.predictions))
    dead = len(wanted & set(tally.dead_letters))
    return {
        "events_in": len(inputs),
        "predictions_out": predicted,
        "dead_letters": dead,
        "missing": len(tally.missing(wanted)),
        "duplicates": tally.duplicate_predictions + tally.duplicate_dead_letters,
        "dead_letter_reasons": dict(sorted(tally.reasons().items())),
        "throughput_eps": round(len(inputs) / elapsed_s, 1) if elapsed_s > 0 else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "rate_target_eps": opts.rate or None,
    }


def run_demo(opts: DemoOptions, console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    say = console.print
    with EmbeddedStack(opts.workdir, opts.entities, say=say, broker=opts.broker) as stack:
        cfg = stack.job_config("demo", opts.partitions, flink__parallelism=opts.parallelism)
        with console.status("starting the scoring job in a local Flink MiniCluster (JVM, Python workers)…"):
            job, reader = stack.start_job(cfg)
        say(f"the scoring job is up (log: {job.log_path})")
        try:
            records = demo_records(opts)
            produced = {"n": 0}
            inputs: list[str] = []
            started = time.time()

            def producer():
                inputs.extend(produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records,
                                      rate=opts.rate or None, encode=demo_data.encode,
                                      on_progress=lambda n: produced.__setitem__("n", n)))
            thread = threading.Thread(target=producer, daemon=True)
            thread.start()
            with Live(console=console, refresh_per_second=4, transient=True) as live:
                while thread.is_alive():
                    snap = reader.snapshot()
                    predicted = sum(not p["event_id"].startswith("warmup-") for p in snap.predictions.values())
                    live.update(f"produced {produced['n']:,}/{len(records):,} · predictions "
                                f"{predicted:,} · dead letters {len(snap.dead_letters):,}")
                    job.check_alive()
                    time.sleep(0.25)
                thread.join()

                def progress(snap, done):
                    live.update(f"produced {len(records):,}/{len(records):,} · accounted {done:,}/{len(inputs):,}")
                tally = reader.wait_for(set(inputs), timeout_s=opts.timeout_s, stall_s=120,
                                        on_progress=progress, check=job.check_alive)
            summary = summarize(tally, inputs, started, opts)
            summary["job_metrics"] = output_metrics(job.rest())
            return summary
        finally:
            reader.stop()
            job.stop()


_OUTPUT_METRIC = re.compile(r"\.(predictions_out|dead_letters_out|dead_letters\.\w+)$")


def output_metrics(rest: FlinkRest) -> dict[str, float]:
    """The job's own counters of what it wrote (``predictions_out``, ``dead_letters_out``,
    ``dead_letters.<reason>``), read from its Flink REST API; {} when it cannot be reached."""
    try:
        return rest.operator_totals(_OUTPUT_METRIC)
    except (OSError, ValueError, KeyError):
        return {}


def render(summary: dict, console: Console) -> None:
    table = Table(title="streamscore demo")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("events_in", "predictions_out", "dead_letters", "missing", "duplicates",
                "throughput_eps", "p50_ms", "p99_ms"):
        table.add_row(key, str(summary[key]))
    for reason, count in summary["dead_letter_reasons"].items():
        table.add_row(f"  dead letters: {reason}", str(count))
    for name, value in summary.get("job_metrics", {}).items():
        table.add_row(f"job metric {name}", f"{value:,.0f}")
    console.print(table)


def to_json_line(summary: dict) -> str:
    keys = ("events_in", "predictions_out", "dead_letters", "throughput_eps", "p50_ms", "p99_ms")
    return json.dumps({k: summary[k] for k in keys})

"""End-to-end benchmark: Kafka → enrich 32 features (Plasma) → gradient-boosting ONNX → Kafka.

Runs, in one invocation on the same data and the same embedded broker/store/model:
  flink  the PyFlink job (MiniCluster, process mode, checkpoints on)
  loop   a plain single-process Python loop doing the same work (the practical ceiling)
  beam   the job's steps as stock Beam transforms (Enrichment, RunInference) on the DirectRunner
For each: throughput draining a pre-filled topic, and event latency (creation → prediction
readable on the output topic) at a fixed input rate. Prints a table, writes bench/results/e2e.json.

    python bench/e2e.py [--events 100000] [--rate 5000] [--latency-seconds 20]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import demo_data  # noqa: E402
from jobs.embedded import EmbeddedStack  # noqa: E402
from jobs.producer import produce  # noqa: E402

RUNNERS = {"flink": "jobs.score_stream", "loop": "bench.plain_loop", "beam": "jobs.beam_score"}
OVERRIDES: dict = {}   # --set section.key=value, applied to every runner's config
console = Console(stderr=True)


def _wait_ready(stack, runner: str, module: str, tag: str):
    """Start a runner on fresh topics and wait until it scores warm-up events."""
    cfg = stack.job_config(f"bench-{runner}-{tag}", partitions=2, **OVERRIDES)
    job, reader = stack.start_job(cfg, module=module)
    return cfg, job, reader


def throughput(stack, runner: str, module: str, n: int) -> dict:
    """Fill the input topic while the runner is paused, then measure how fast it drains it."""
    cfg, job, reader = _wait_ready(stack, runner, module, "tput")
    try:
        job.pause()
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
                         demo_data.events(n, stack.entities, seed=17), encode=demo_data.encode)
        started = time.time()
        job.resume()
        tally = reader.wait_for(set(coords), timeout_s=900, stall_s=120, check=job.check_alive)
        last = tally.last_arrival_ms(set(coords))
        missing = len(tally.missing(set(coords)))
        return {"events": n, "missing": missing, "seconds": round(last / 1000 - started, 3),
                "events_per_s": round(n / (last / 1000 - started), 1)}
    finally:
        reader.stop()
        job.stop()


def latency(stack, runner: str, module: str, rate: float, seconds: float) -> dict:
    cfg, job, reader = _wait_ready(stack, runner, module, "lat")
    try:
        n = int(rate * seconds)
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
                         demo_data.events(n, stack.entities, seed=19), rate=rate, encode=demo_data.encode)
        tally = reader.wait_for(set(coords), timeout_s=600, stall_s=120, check=job.check_alive)
        lat = tally.latencies_ms(set(coords))
        return {"rate_eps": rate, "events": n, "missing": len(tally.missing(set(coords))),
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "max_ms": round(float(lat.max()), 2)}
    finally:
        reader.stop()
        job.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events for the throughput runs")
    parser.add_argument("--rate", type=float, default=5000, help="input rate of the latency runs (events/s)")
    parser.add_argument("--latency-seconds", type=float, default=20, help="duration of the latency runs")
    parser.add_argument("--runners", default="flink,loop", help=f"comma-separated subset of {sorted(RUNNERS)}")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="job config override for every runner, e.g. batch.heartbeat_per_s=50")
    parser.add_argument("--skip-throughput", action="store_true", help="only the latency runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "e2e.json")
    args = parser.parse_args()
    for item in args.set:
        key, value = item.split("=", 1)
        OVERRIDES[key.replace(".", "__")] = yaml.safe_load(value)
    results: dict[str, dict] = {}
    with EmbeddedStack(say=lambda m: console.print(m)) as stack:
        for runner in args.runners.split(","):
            module = RUNNERS[runner]
            results.setdefault(runner, {})["throughput"] = {"events_per_s": float("nan"), "missing": 0}
            if not args.skip_throughput:
                console.print(f"[bold]{runner}[/]: throughput over {args.events:,} events…")
                results[runner]["throughput"] = throughput(stack, runner, module, args.events)
            console.print(f"[bold]{runner}[/]: latency at {args.rate:,.0f} events/s for {args.latency_seconds:.0f} s…")
            results[runner]["latency"] = latency(stack, runner, module, args.rate, args.latency_seconds)
    table = Table(title="end to end: Kafka → Plasma (32 features) → GBM ONNX → Kafka")
    for col in ("runner", "events/s", "vs loop", f"p50 ms @{args.rate:.0f}/s", f"p99 ms @{args.rate:.0f}/s", "missing"):
        table.add_column(col, justify="right")
    base = results.get("loop", {}).get("throughput", {}).get("events_per_s")
    for runner, r in results.items():
        eps = r["throughput"]["events_per_s"]
        table.add_row(runner, f"{eps:,.0f}", f"{eps / base:.2f}" if base else "-",
                      str(r["latency"]["p50_ms"]), str(r["latency"]["p99_ms"]),
                      str(r["throughput"]["missing"] + r["latency"]["missing"]))
    Console().print(table)
    report = {"benchmark": "e2e", "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
              "settings": vars(args) | {"out": str(args.out)}, "results": results,
              "ratio_flink_over_loop": round(results["flink"]["throughput"]["events_per_s"] / base, 3)
              if base and "flink" in results else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

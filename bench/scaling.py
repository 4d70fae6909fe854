"""Scaling of the Flink job on this box: throughput draining a pre-filled topic against Flink
parallelism × input partitions, the CPU each configuration spends per event (the job's whole
process tree: JVM and Python workers), the job's idle CPU, and from them a per-core cost: how many
TaskManager cores a given input rate needs.

    python bench/scaling.py [--parallelism 1,2] [--partitions 2,4,8] [--events 100000] [--broker tansu]

For each configuration: a fresh job (bench/e2e.py's runner "flink", with flink.parallelism set) on
fresh topics, warm-up events scored, paused, the topic filled, resumed, drained; then the job's
idle CPU over --idle-seconds. Every run records the machine's load (1-minute load average and the
CPU busy over the run, all processes): on shared cores events/s measures the scheduler's share as
much as the job, CPU per event is the steadier figure. Prints a table, writes
bench/results/scaling.json.

Per-core cost: cores(R events/s) ≈ idle cores + R × marginal CPU s per event, the marginal cost
being the drain's CPU less the idle cores over the drain's seconds, per event (at full batches;
at low rates batches are small and the per-event cost is higher, see bench/e2e.py's "CPU s/1k ev
@rate"). One core scores at most 1 / (drain CPU s per event) events/s.
``--report-only`` re-renders a saved JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e import RUNNERS, MachineLoad, TreeCpu, throughput, warm_up  # noqa: E402
from jobs.embedded import EmbeddedStack  # noqa: E402

console = Console(stderr=True)


def idle_cores(stack, parallelism: int, partitions: int, seconds: float) -> dict:
    """CPU of the job's process tree while it runs with no input (heartbeats, polling, bundles,
    checkpoints), in cores, after a short settling time."""
    from bench.e2e import _start

    runner = replace(RUNNERS["flink"], overrides=(("flink__parallelism", parallelism),))
    _cfg, job, reader = _start(stack, f"idle-p{parallelism}-k{partitions}", runner, "idle", partitions)
    try:
        time.sleep(5)       # the warm-up events' batches and the first checkpoints settle
        cpu, machine = TreeCpu(job.pid).start(), MachineLoad()
        time.sleep(seconds)
        spent = sum(cpu.by_process().values())
        return {"seconds": seconds, "cores": round(spent / seconds, 3), "machine": machine.report(spent)}
    finally:
        reader.stop()
        job.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallelism", default="1,2")
    parser.add_argument("--partitions", default="2,4,8")
    parser.add_argument("--events", type=int, default=100_000, help="events drained per configuration")
    parser.add_argument("--idle-seconds", type=float, default=15, help="idle CPU sample per parallelism (0: skip)")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scaling.json")
    parser.add_argument("--report-only", action="store_true", help="re-render --out without running anything")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads(args.out.read_text())
        return report(saved["runs"], {int(k): v for k, v in saved["idle"].items()}, saved["settings"], args.out)
    parallelisms = [int(x) for x in args.parallelism.split(",")]
    partition_counts = [int(x) for x in args.partitions.split(",")]
    runs, idle = [], {}
    with EmbeddedStack(say=lambda m: console.print(m), broker=args.broker) as stack:
        console.print("warming the stack up (a throwaway run of the Flink job)…")
        warm_up(stack)
        for parallelism in parallelisms:
            runner = replace(RUNNERS["flink"], overrides=(("flink__parallelism", parallelism),))
            for partitions in partition_counts:
                console.print(f"[bold]parallelism {parallelism}, {partitions} partitions[/]: draining {args.events:,}…")
                result = throughput(stack, f"scale-p{parallelism}-k{partitions}", runner, args.events, partitions)
                runs.append({"parallelism": parallelism, **result})
                console.print(f"  {result['events_per_s']:,.0f} events/s, {result['cpu_s_per_1k_events']} CPU s/1k, "
                              f"machine {result['machine']}")
            if args.idle_seconds:
                idle[parallelism] = idle_cores(stack, parallelism, partition_counts[0], args.idle_seconds)
                console.print(f"  idle: {idle[parallelism]['cores']} cores")
    return report(runs, idle, vars(args) | {"out": str(args.out)}, args.out)


def report(runs: list[dict], idle: dict, settings: dict, path: Path) -> int:
    """Print the table and the per-core cost, write the JSON."""
    parallelisms = sorted({r["parallelism"] for r in runs})
    out = Console(width=200)
    table = Table(title="Flink job scaling: drain throughput vs parallelism × partitions")
    for col in ("parallelism", "partitions", "events/s", "CPU s/1k ev", "marginal CPU µs/ev", "events/s per busy core of the job",
                "load 1m start → end", "machine busy cores", "others' busy cores", "missing"):
        table.add_column(col, justify="right")
    for r in runs:
        m = r["machine"]
        per_core = round(1000 / r["cpu_s_per_1k_events"]) if r["cpu_s_per_1k_events"] else None
        r["events_per_s_per_core"] = per_core
        base = idle.get(r["parallelism"], {}).get("cores", 0.0)
        r["marginal_cpu_us_per_event"] = round((r["cpu_s"] - base * r["seconds"]) / r["events"] * 1e6, 1)
        table.add_row(str(r["parallelism"]), str(r["partitions"]), f"{r['events_per_s']:,.0f}",
                      f"{r['cpu_s_per_1k_events']:.4f}", f"{r['marginal_cpu_us_per_event']:.1f}",
                      f"{per_core:,}" if per_core else "-",
                      f"{m['load_1m_start']} → {m['load_1m_end']}", str(m["busy_cores"]), str(m.get("others_busy_cores")),
                      str(r["missing"]))
    out.print(table)
    per_core = {}
    for parallelism in parallelisms:
        mine = [r for r in runs if r["parallelism"] == parallelism]
        drain = sorted(r["cpu_s_per_1k_events"] / 1000 for r in mine)[len(mine) // 2]          # CPU s per event
        marginal = sorted(r["marginal_cpu_us_per_event"] / 1e6 for r in mine)[len(mine) // 2]
        base = idle.get(parallelism, {}).get("cores", 0.0)
        per_core[parallelism] = {"drain_cpu_s_per_event_median": drain, "marginal_cpu_s_per_event_median": marginal,
                                 "idle_cores": base, "events_per_s_per_core_draining": round(1 / drain),
                                 "cores_for": {rate: round(base + rate * marginal, 2) for rate in (1000, 5000, 20000, 50000)}}
        out.print(f"parallelism {parallelism}: draining {drain * 1e6:.0f} CPU µs per event (median of {len(mine)}) → one "
                  f"core drains ≤ {1 / drain:,.0f} events/s; idle {base} cores, marginal {marginal * 1e6:.0f} µs per "
                  f"event; cores ≈ {base} + R × {marginal * 1e6:.0f} µs: "
                  + ", ".join(f"{rate:,}/s → {c}" for rate, c in per_core[parallelism]["cores_for"].items()))
    saved = {"benchmark": "scaling", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
             "settings": settings, "runs": runs, "idle": idle, "per_core": per_core}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

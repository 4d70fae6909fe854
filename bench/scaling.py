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

Per-core cost: cores(R events/s) ≈ idle cores + R × CPU s per event (drained, the marginal cost
at full batches; at low rates batches are small and the per-event cost is higher, see
bench/e2e.py's "CPU s/1k ev @rate"). One core scores at most 1 / (CPU s per event) events/s.
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
    args = parser.parse_args()
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
    out = Console(width=200)
    table = Table(title="Flink job scaling: drain throughput vs parallelism × partitions")
    for col in ("parallelism", "partitions", "events/s", "CPU s/1k ev", "events/s per busy core of the job",
                "load 1m start → end", "machine busy cores", "others' busy cores", "missing"):
        table.add_column(col, justify="right")
    for r in runs:
        m = r["machine"]
        per_core = round(1000 / r["cpu_s_per_1k_events"]) if r["cpu_s_per_1k_events"] else None
        r["events_per_s_per_core"] = per_core
        table.add_row(str(r["parallelism"]), str(r["partitions"]), f"{r['events_per_s']:,.0f}",
                      f"{r['cpu_s_per_1k_events']:.4f}", f"{per_core:,}" if per_core else "-",
                      f"{m['load_1m_start']} → {m['load_1m_end']}", str(m["busy_cores"]), str(m.get("others_busy_cores")),
                      str(r["missing"]))
    out.print(table)
    per_core = {}
    for parallelism in parallelisms:
        costs = sorted(r["cpu_s_per_1k_events"] for r in runs if r["parallelism"] == parallelism)
        if not costs:
            continue
        median = costs[len(costs) // 2] / 1000        # CPU s per event
        base = idle.get(parallelism, {}).get("cores", 0.0)
        per_core[parallelism] = {"cpu_s_per_event_median": median, "idle_cores": base,
                                 "events_per_s_per_core": round(1 / median),
                                 "cores_for": {rate: round(base + rate * median, 2) for rate in (1000, 5000, 20000, 50000)}}
        out.print(f"parallelism {parallelism}: {median * 1e6:.0f} CPU µs per event (median of {len(costs)}) → one core "
                  f"scores ≤ {1 / median:,.0f} events/s; idle {base} cores; cores ≈ {base} + R × {median * 1e6:.0f} µs: "
                  + ", ".join(f"{rate:,}/s → {c}" for rate, c in per_core[parallelism]["cores_for"].items()))
    report = {"benchmark": "scaling", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "settings": vars(args) | {"out": str(args.out)}, "runs": runs, "idle": idle, "per_core": per_core}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

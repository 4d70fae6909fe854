"""``make chaos``: every chaos scenario at full size, each on its own embedded stack; prints a
table (scenario, delivery, inputs, predicted, dead-lettered, duplicates, lost) and, as its very
last line, the same as one JSON object keyed by scenario. Exits 1 if any input was lost, a dead
letter was damaged, an exactly-once scenario wrote a duplicate, or a scenario failed.

The ``*-exactly-once`` scenarios run the job with ``kafka.delivery: exactly_once`` (Flink's
transactional KafkaSink) and a ``read_committed`` reader, always on Apache Kafka (the embedded
Tansu's transactions do not isolate), whatever ``--broker`` says.

    python tests/chaos/run_chaos.py [--events 50000] [--only kill-job,broker-outage] [--broker kafka]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).parent)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import scenarios  # noqa: E402
from feature_store_fixtures import REDIS_URL  # noqa: E402
from jobs.embedded import EmbeddedStack  # noqa: E402

# name -> (durable broker, broker: None = --broker, scenario)
SCENARIOS = {
    "kill-job": (False, None, lambda stack, n: scenarios.kill_job(stack, events=n, kills=3)),
    "kill-worker": (False, None, lambda stack, n: scenarios.kill_python_worker(stack, events=n)),
    "kill-job-exactly-once": (False, "kafka", lambda stack, n: scenarios.kill_job(
        stack, events=n, kills=3, delivery="exactly_once")),
    "kill-worker-exactly-once": (False, "kafka", lambda stack, n: scenarios.kill_python_worker(
        stack, events=n, delivery="exactly_once")),
    "broker-outage": (True, None, lambda stack, n: scenarios.broker_outage(stack, events=n, outage_s=10)),
    "plasma-restart": (False, None, lambda stack, n: scenarios.plasma_restart(stack, events=n)),
    "slow-store": (False, None, lambda stack, n: scenarios.slow_store(stack, REDIS_URL, events=n)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="input events per scenario (default 50,000)")
    parser.add_argument("--only", help=f"comma-separated scenarios (default all: {', '.join(SCENARIOS)})")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu",
                        help="embedded broker: tansu (default) or kafka (Apache Kafka 4.x, KRaft)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    console = Console(stderr=True)
    results: dict[str, dict] = {}
    for name in names:
        durable, broker, run = SCENARIOS[name]
        console.rule(f"{name}: {args.events:,} events")
        try:
            with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as workdir, \
                    EmbeddedStack(Path(workdir), say=lambda *_: None, durable_broker=durable,
                                  broker=broker or args.broker) as stack:
                outcome = run(stack, args.events)
            results[name] = outcome.to_dict()
            console.print(outcome.to_dict())
        except Exception as exc:  # noqa: BLE001 - one failing scenario must not hide the others
            console.print(f"[red]{name} failed:[/red] {exc}")
            traceback.print_exc()
            results[name] = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
    table = Table(title="chaos scenarios")
    for column in ("scenario", "delivery", "inputs", "predicted", "dead-lettered", "duplicates", "lost",
                   "failovers", "seconds", "notes"):
        table.add_column(column, justify="left" if column in ("scenario", "notes") else "right")
    for name, r in results.items():
        if "error" in r:
            table.add_row(name, "-", "-", "-", "-", "-", "[red]failed[/red]", "-", "-", r["error"][:80])
        else:
            table.add_row(name, r["delivery"].replace("_", "-"), f"{r['inputs']:,}", f"{r['predicted']:,}", f"{r['dead_lettered']:,}",
                          f"{r['duplicates']:,}", f"{r['lost']:,}", str(r["failovers"]), f"{r['seconds']:.0f}",
                          "; ".join(r["notes"]))
    Console(width=200).print(table)
    print(json.dumps(results, sort_keys=True))
    failed = [n for n, r in results.items()
              if "error" in r or r["lost"] or r["wrong_reasons"] or r["damaged_dead_letters"]
              or (r["delivery"] == "exactly_once" and r["duplicates"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`streamscore demo`: the whole pipeline on embedded defaults."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the scoring job end to end on an embedded broker, Plasma store and demo model",
        description="Starts an embedded Kafka-compatible broker and a Plasma store on free loopback "
                    "ports, loads 100k entities × 32 features, trains (once, cached) a demo gradient-"
                    "boosting model exported to ONNX in two versions and registers them in a registry "
                    "(SQLite), runs the PyFlink scoring job in a local MiniCluster following the "
                    "production deployment, produces synthetic transactions, promotes version 2 "
                    "mid-run and reads the predictions back. "
                    "Prints a summary table and, as the last line, one JSON object.")
    parser.add_argument("--events", type=int, default=20_000, help="events to produce (default 20000)")
    parser.add_argument("--rate", type=float, default=5000, help="events/s to produce; 0 = as fast as possible (default 5000)")
    parser.add_argument("--partitions", type=int, default=2, help="input topic partitions (default 2)")
    parser.add_argument("--parallelism", type=int, default=1, help="Flink parallelism (default 1)")
    parser.add_argument("--bad-fraction", type=float, default=0.01,
                        help="share of malformed / unknown-entity events, dead-lettered (default 0.01)")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu",
                        help="embedded broker: tansu (default, nothing downloaded) or kafka (Apache Kafka 4.x, "
                             "KRaft; jars fetched once by mvn from Maven Central)")
    parser.add_argument("--workdir", type=Path, help="keep logs, config and checkpoints here (default: a temp dir, removed)")
    parser.add_argument("--registry", help="the registry the job follows (default: a SQLite file in the demo's folder; "
                        "e.g. postgresql://postgres@127.0.0.1:5432/test?schema=demo)")
    parser.add_argument("--experiment", action="store_true",
                        help="a live experiment instead of the mid-run promotion: version 2 as a shadow and a "
                        "canary serving --canary-share of the entities beside the champion; prints the in-stream "
                        "comparison and writes its HTML report")
    parser.add_argument("--canary-share", type=float, default=0.1, help="--experiment: the canary's share (0.1)")
    parser.add_argument("--html", type=Path, help="--experiment: write the comparison report here "
                        "(default: experiment-report.html in the workdir)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from jobs.demo import DemoOptions, render, run_demo, to_json_line

    console = Console(stderr=True)
    opts = DemoOptions(events=args.events, rate=args.rate, partitions=args.partitions,
                       parallelism=args.parallelism, bad_fraction=args.bad_fraction, workdir=args.workdir,
                       broker=args.broker, registry=args.registry, experiment=args.experiment,
                       canary_share=args.canary_share, html=args.html)
    try:
        summary = run_demo(opts, console)
    except KeyboardInterrupt:
        console.print("interrupted: every process the demo started has been stopped")
        return 130
    render(summary, Console())
    print(to_json_line(summary), flush=True)
    return 0 if summary["missing"] == 0 and summary["duplicates"] == 0 else 1

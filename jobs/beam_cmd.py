"""`streamscore beam`: the scoring job on Apache Beam (the DirectRunner here; Flink, Dataflow and
other runners through Beam pipeline options after ``--``)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "beam", help="run the scoring job on Apache Beam (Kafka → Enrichment → RunInference → Kafka/files)",
        description="Run the scoring pipeline as stock Beam transforms, configured by the job YAML the "
                    "Flink job reads. Without Beam options it runs on the DirectRunner in this process, "
                    "until stopped, or until --stop-offsets are reached. Beam options go after --, "
                    "e.g. -- --runner FlinkRunner --flink_master host:8081 --streaming.")
    add_arguments(parser)
    parser.set_defaults(func=_run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Beam job's command line (shared by ``streamscore beam`` and ``python -m jobs.beam_score``)."""
    parser.add_argument("--config", "-c", help="job configuration YAML (the Flink job's; flink.* is ignored)")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set batch.max_events=1000 (repeatable)")
    parser.add_argument("--start-offsets", type=offsets, metavar="P=OFFSET,...",
                        help="first offset to read per partition (default: kafka.start_from)")
    parser.add_argument("--stop-offsets", type=offsets, metavar="P=OFFSET,...",
                        help="bounded read: stop before these offsets (every partition) and end the pipeline")
    parser.add_argument("--output-files", metavar="PREFIX",
                        help="write predictions and dead letters as JSON-lines files PREFIX-*.jsonl instead "
                             "of Kafka (needs --stop-offsets)")
    parser.add_argument("--watch-model", metavar="GLOB",
                        help="hot-swap the model when a new file matching GLOB appears (RunInference's "
                             "WatchFilePattern; a streaming runner such as Flink or Dataflow, not the DirectRunner)")
    parser.add_argument("--watch-interval", type=float, default=10, help="seconds between --watch-model checks")
    parser.add_argument("--registry-schedule", type=float, metavar="WINDOW_S",
                        help="with model.registry: score each event with the version that was champion in its "
                             "event-time window of WINDOW_S seconds (the registry's history as RunInference's "
                             "model-update side input; for bounded replays on the DirectRunner)")
    parser.add_argument("beam_args", nargs=argparse.REMAINDER,
                        help="after --: Beam pipeline options (--runner, --flink_master, --project, ...)")


def offsets(text: str) -> dict[int, int]:
    """``P=OFFSET[,P=OFFSET...]`` → {partition: offset}."""
    try:
        return {int(p): int(o) for p, o in (item.split("=", 1) for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PARTITION=OFFSET[,PARTITION=OFFSET...], got {text!r}")


def _run(args: argparse.Namespace) -> int:
    from jobs.beam_score import config_from_args, configure_logging, run

    configure_logging()
    run(config_from_args(args), args)
    return 0

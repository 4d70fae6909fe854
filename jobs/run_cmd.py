"""`streamscore run`: the scoring job on a local MiniCluster, with checks first and a live status."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run the scoring job (Kafka → features → model → Kafka)",
        description="Check the model, feature store and topics, then run the streaming scoring job in a "
                    "local Flink MiniCluster (its own process group) and show the Flink Web UI URL and a "
                    "live status line: events/s in, predictions/s, dead letters by reason, p50/p99 "
                    "latency (poll → acknowledged), consumer lag, restarts. Stop it with Ctrl-C or "
                    "SIGTERM (state is kept in checkpoints; resume with --restore latest).")
    add_job_arguments(parser)
    parser.add_argument("--log-dir", metavar="DIR", help="where the job's logs go (default: "
                        "$STREAMSCORE_LOG_DIR, else ./streamscore-logs)")
    parser.add_argument("--status-interval", type=float, default=2.0, metavar="S",
                        help="seconds between status lines (default 2)")
    parser.add_argument("--skip-checks", action="store_true",
                        help="submit without checking model, feature store and topics first")
    parser.set_defaults(func=_run)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --set, --restore: what every runner of the job configuration takes."""
    parser.add_argument("--config", "-c", help="job configuration YAML (see flink-conf/job.example.yaml)")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set flink.parallelism=2 (repeatable)")
    parser.add_argument("--restore", metavar="PATH|latest",
                        help="restore from this checkpoint/savepoint, or 'latest' in flink.checkpoint_dir")


def config_from_args(args: argparse.Namespace):
    """The validated JobConfig from --config, --set and --restore."""
    from jobs.config import load_config

    overrides = list(args.set)
    if args.restore:
        overrides.append(f"flink.restore_from={args.restore}")
    return load_config(args.config, overrides)


def _run(args: argparse.Namespace) -> int:
    from jobs.local_run import log_dir_for, run_locally

    cfg = config_from_args(args)
    return run_locally(cfg, log_dir=log_dir_for(args.log_dir), status_interval_s=args.status_interval,
                       checks=not args.skip_checks)

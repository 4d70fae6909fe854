"""`streamscore run`: the scoring job on a local MiniCluster (or the cluster Flink is pointed at)."""
from __future__ import annotations

import argparse
import logging


def register(subparsers) -> None:
    from jobs.score_stream import add_job_arguments

    parser = subparsers.add_parser(
        "run", help="run the scoring job (Kafka → features → model → Kafka)",
        description="Run the streaming scoring job. Without a cluster configured it runs in a local "
                    "Flink MiniCluster inside this process; stop it with Ctrl-C (state is kept in "
                    "checkpoints; resume with --restore latest).")
    add_job_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from jobs.score_stream import config_from_args, prepare_process, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    prepare_process(cfg)
    run(cfg)
    return 0

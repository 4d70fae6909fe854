"""`streamscore` command line: one entry point, one sub-command group per concern.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Command modules, in the order they appear in --help.
COMMAND_MODULES = [
    "jobs.demo_cmd",       # streamscore demo
    "jobs.run_cmd",        # streamscore run (the Flink scoring job)
    "jobs.beam_cmd",       # streamscore beam (the scoring job on Apache Beam)
    "jobs.models_cmd",     # streamscore models inspect|check|export
    "jobs.features_cmd",   # streamscore features load|serve|get
    "jobs.consume_cmd",    # streamscore consume [--dedupe]
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamscore",
        description="Score ONNX, PMML and scikit-learn models on Kafka event streams with "
        "Apache Flink (and Beam), enriched from a shared-memory Arrow feature store.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command group not built yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`streamscore` command line: one entry point, one sub-command group per concern.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser.
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import io
import signal
import sys

# Command modules, in the order they appear in --help.
COMMAND_MODULES = [
    "jobs.demo_cmd",       # streamscore demo
    "jobs.run_cmd",        # streamscore run (the Flink scoring job)
    "jobs.beam_cmd",       # streamscore beam (the scoring job on Apache Beam)
    "jobs.models_cmd",     # streamscore models inspect|check|export
    "jobs.features_cmd",   # streamscore features load|serve|get|publish
    "jobs.registry_cmd",   # streamscore registry init|register|list|show|promote|rollback|retire|history
    "jobs.consume_cmd",    # streamscore consume [--dedupe]
    "jobs.produce_cmd",    # streamscore produce FILE
    "jobs.dev_cmd",        # streamscore dev up|down|status
]

# Command modules import only argparse at module level: heavy modules (pyflink, pyarrow,
# onnxruntime, apache_beam) are imported inside the commands that need them, so --help and
# the light commands start in a fraction of a second.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamscore",
        description="Score ONNX, PMML and scikit-learn models on Kafka event streams with "
        "Apache Flink (and Beam), enriched from a shared-memory Arrow feature store.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="print full tracebacks instead of one-line error messages")
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


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a command hangs.
    Not where stderr is no file (main() called in-process with captured output)."""
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (io.UnsupportedOperation, AttributeError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    debug = "--debug" in head          # accepted anywhere before "--", not only before COMMAND
    if debug:
        argv.remove("--debug")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    dump_stacks_on_sigusr1()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"streamscore {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns errors into one line
        if debug:
            raise
        from jobs.errors import UserError, one_line

        known = isinstance(exc, (UserError, ValueError, OSError, TimeoutError))
        hint = "" if known else " (--debug for the traceback)"
        print(f"streamscore {args.command}: {one_line(exc, getattr(args, 'config', None))}{hint}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

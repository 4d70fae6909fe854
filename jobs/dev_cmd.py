"""`streamscore dev up|down|status`: a local broker and feature store for your own job YAML."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    dev = subparsers.add_parser(
        "dev", help="start/stop a local broker and feature store for running a job on your machine",
        description="A local stack for `streamscore run`: an embedded Kafka-compatible broker, a Plasma "
                    "feature store and the topics your job YAML names.")
    sub = dev.add_subparsers(dest="dev_command", metavar="ACTION")
    dev.set_defaults(func=lambda args: (dev.print_help(), 2)[1])

    p = sub.add_parser(
        "up", help="start the broker and the feature store, create the topics, print the addresses",
        description="Start the embedded broker and a Plasma store, create the input, prediction and "
                    "dead-letter topics of --config, and print the addresses to put in that YAML. The "
                    "broker listens on the port of kafka.bootstrap_servers when that is on this host "
                    "(default 9092; --port 0: any free port); the Plasma store on the socket of "
                    "features.store. Runs until Ctrl-C or SIGTERM with a status line; --background "
                    "returns once everything is up (stop it with `streamscore dev down`).")
    p.add_argument("--config", "-c", help="job YAML whose addresses and topics to use (default: the job defaults)")
    p.add_argument("--broker", default="tansu", help="embedded broker to run (default tansu; the only one "
                   "available today)")
    p.add_argument("--port", type=int, help="broker port (default: from --config, else 9092; 0 = any free port)")
    p.add_argument("--plasma-socket", help="Plasma store socket (default: from features.store of --config)")
    p.add_argument("--plasma-memory", default="512MiB", help="Plasma shared memory, e.g. 2GiB (default 512MiB): "
                   "room for two versions of your feature table")
    p.add_argument("--partitions", type=int, default=2, help="partitions of the input and prediction topics "
                   "(default 2)")
    p.add_argument("--background", action="store_true", help="run detached; return once everything is up")
    _state_arg(p)
    p.set_defaults(func=_up)

    p = sub.add_parser("down", help="stop a stack started with `dev up --background`")
    _state_arg(p)
    p.set_defaults(func=_down)

    p = sub.add_parser("status", help="print the addresses of the running stack")
    _state_arg(p)
    p.set_defaults(func=_status)


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=Path(".streamscore/dev"),
                   help="where the stack keeps its logs and dev.json (default ./.streamscore/dev)")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    from jobs.config import load_config
    from jobs.dev import DevOptions, up, up_in_background
    from jobs.features_cmd import parse_size

    config = load_config(args.config)
    if args.background:
        argv = [a for a in sys.argv[1:] if a not in ("--background", "--debug")]
        if "--state-dir" not in argv:
            argv += ["--state-dir", str(args.state_dir)]
        return up_in_background(argv, args.state_dir, _say)
    opts = DevOptions(config=config, config_path=args.config, broker=args.broker, port=args.port,
                      plasma_socket=args.plasma_socket, plasma_memory=parse_size(args.plasma_memory),
                      partitions=args.partitions, state_dir=args.state_dir)
    from jobs.local_run import status_printer

    return up(opts, _say, status_printer())


def _down(args: argparse.Namespace) -> int:
    from jobs.dev import down
    return down(args.state_dir, _say)


def _status(args: argparse.Namespace) -> int:
    from jobs.dev import DevState, alive, describe

    state = DevState.read(args.state_dir.resolve())
    if state is None or not alive(state.pid):
        _say("no dev stack is up")
        return 1
    for line in describe(state, None):
        _say(line)
    return 0

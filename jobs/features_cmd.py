"""`streamscore features load|serve|get|publish`: fill, run and inspect the feature store; publish a
snapshot to the registry."""
from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
import time

DEFAULT_MEMORY = 1 << 30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"2GiB"``, ``"512MB"``, ``"1000000"`` -> bytes."""
    m = _SIZE.match(str(text))
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512MiB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def register(subparsers) -> None:
    features = subparsers.add_parser(
        "features", help="load, serve and inspect the feature store",
        description="Load feature tables into a store (plasma://, arrow-shm://, redis://, postgresql://), "
        "run a Plasma store, and print the features of entity keys.")
    sub = features.add_subparsers(dest="features_command", metavar="ACTION")
    features.set_defaults(func=lambda args: (features.print_help(), 2)[1])

    p = sub.add_parser("load", help="publish a table as a new version of a store",
                       description="Read a .parquet/.csv/.arrow table and publish it as a new immutable version. "
                       "Running readers switch to it within their refresh interval; older versions are "
                       "released once no reader holds them.")
    p.add_argument("file", help="table file (.parquet, .csv, .arrow)")
    p.add_argument("--key", default="entity_id", help="entity key column (default entity_id)")
    p.add_argument("--replace-schema", action="store_true",
                   help="publish even if the features differ from the served version's (names, order, "
                   "types); without it such a table is refused and the served version stays")
    _store_args(p)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("serve", help="run a Plasma store sized for the feature tables",
                       description="Start plasma-store-server (shipped in the pyarrow 11 wheel) on the socket of "
                       "the plasma:// store URI and keep it running until Ctrl-C / SIGTERM. Size it for two "
                       "versions of the table: the served one and the one being published.")
    _store_args(p)
    p.add_argument("--memory", type=parse_size, help="shared-memory capacity, e.g. 2GiB (default: the URI's "
                   "memory= option, else 1GiB)")
    p.add_argument("--directory", default="/dev/shm", help="where Plasma maps its memory (default /dev/shm)")
    p.add_argument("--load", metavar="FILE", help="publish this table once the store is up")
    p.add_argument("--key", default="entity_id", help="key column of --load (default entity_id)")
    p.set_defaults(func=cmd_serve)

    from jobs.registry_cmd import add_publish_parser
    add_publish_parser(sub)

    p = sub.add_parser("get", help="print the features of some keys as JSON lines",
                       description="Look up entity keys and print one JSON object per key: its features, or "
                       '"found": false for keys the store does not have.')
    p.add_argument("keys", nargs="+", metavar="KEY")
    _store_args(p)
    p.set_defaults(func=cmd_get)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store URI (default: features.store of --config, else the job default)")
    p.add_argument("--config", help="job config YAML to take features.store from")


def _store_uri(args: argparse.Namespace) -> str:
    if args.store:
        return args.store
    if args.config and getattr(args, "func", None) is cmd_get:
        # a light command: read the one key it needs, without validating the whole config
        import yaml
        with open(args.config) as f:
            data = yaml.safe_load(f)
        store = (data.get("features") or {}).get("store") if isinstance(data, dict) else None
        if isinstance(store, str):
            return store
    from jobs.config import load_config
    return load_config(args.config).features.store


def cmd_load(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from connectors.feature_store import FeatureStoreError, load_table, read_table_file
    console = Console(stderr=True)
    uri = _store_uri(args)
    started = time.perf_counter()
    try:
        table = read_table_file(args.file)
        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                      TextColumn("{task.completed:,}/{task.total:,} rows"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task(f"loading {args.file}", total=table.num_rows)
            version = load_table(uri, table, key=args.key, replace_schema=args.replace_schema,
                                 progress=lambda done, total: progress.update(task, completed=done))
    except (FeatureStoreError, OSError) as exc:
        console.print(f"[red]load failed:[/red] {exc}")
        return 1
    console.print(f"published version [bold]{version}[/bold] of {uri}: {table.num_rows:,} rows x "
                  f"{table.num_columns - 1} features in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rich.console import Console

    from connectors.feature_store import FeatureStoreError, load_table, parse_uri, read_table_file
    from connectors.embedded.plasma_server import PlasmaServer
    from connectors.feature_store.plasma_objects import socket_path
    console = Console(stderr=True)
    uri = _store_uri(args)
    u = parse_uri(uri)
    if u.scheme != "plasma":
        console.print(f"[red]features serve runs a Plasma store; {uri} is {u.scheme}://[/red]")
        return 2
    memory = args.memory or (parse_size(u.params["memory"]) if "memory" in u.params else DEFAULT_MEMORY)
    server = PlasmaServer(socket_path(u), memory, directory=args.directory)
    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except FeatureStoreError as exc:
        console.print(f"[red]cannot start the plasma store:[/red] {exc}")
        return 1
    try:
        console.print(f"plasma store pid {server.pid} on {server.socket_path}, "
                      f"{memory / 2**20:,.0f} MiB in {args.directory}; store URI {uri}")
        if args.load:
            table = read_table_file(args.load)
            version = load_table(uri, table, key=args.key)
            console.print(f"published {args.load} as version {version} ({table.num_rows:,} rows)")
        print("ready", flush=True)
        while not stop["now"] and server.is_running():
            time.sleep(0.2)
        if not server.is_running():
            console.print("[red]plasma-store-server exited[/red]")
            return 1
        return 0
    except FeatureStoreError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        server.stop()


def _json_value(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def cmd_get(args: argparse.Namespace) -> int:
    import numpy as np

    from connectors.feature_store import FeatureStoreError, FeatureStoreUnavailable, open_store
    uri = _store_uri(args)
    try:
        keys = [int(k) for k in args.keys]
        query = np.array(keys, dtype=np.int64)
    except ValueError:
        keys = list(args.keys)
        query = np.array(keys, dtype=object)
    try:
        with open_store(uri) as store:
            batch, found = store.lookup(query)
            version = store.version
    except FeatureStoreUnavailable as exc:
        print(json.dumps({"error": "feature_store_unavailable", "detail": str(exc)}), file=sys.stderr)
        return 1
    except FeatureStoreError as exc:
        print(json.dumps({"error": "feature_store_error", "detail": str(exc)}), file=sys.stderr)
        return 1
    rows = batch.to_pylist()
    for key, ok, row in zip(keys, found.tolist(), rows):
        if ok:
            out = {"key": key, "found": True, "version": version,
                   "features": {k: _json_value(v) for k, v in row.items()}}
        else:
            out = {"key": key, "found": False, "version": version, "reason": "unknown_entity"}
        print(json.dumps(out))
    return 0

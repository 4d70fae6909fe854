"""`streamscore dev`: a local broker and feature store for running the job against your own data.

``up`` starts the embedded broker (``--broker``; Tansu today, see :data:`BROKERS`) and a Plasma
store, creates the topics a job YAML names, prints the addresses to put in that YAML, and keeps
a status line until Ctrl-C / SIGTERM / ``dev down`` stops everything. ``--background`` runs the
same supervisor detached. What runs is recorded in ``<state-dir>/dev.json``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from jobs.config import JobConfig
from jobs.errors import UserError

DEFAULT_STATE_DIR = ".streamscore/dev"
DEFAULT_PORT = 9092
STATE_FILE = "dev.json"


def _start_tansu(port: int, workdir: Path):
    from connectors.embedded.tansu import EmbeddedBroker

    return EmbeddedBroker(port=port or None, log_path=workdir / "broker.log").start()


# Embedded brokers `dev up --broker NAME` can start: NAME → start(port, workdir) (port 0: any free
# port, retried if taken meanwhile; raises BrokerError) returning an object with
# ``bootstrap_servers``, ``is_running()``, ``stop()`` and ``_proc`` (its process).
# An Apache Kafka broker (connectors/embedded) plugs in here as "kafka".
BROKERS: dict[str, Callable] = {"tansu": _start_tansu}


@dataclass
class DevState:
    """What ``dev up`` started (``<state-dir>/dev.json``)."""

    pid: int                                   # the supervising `dev up` process
    broker: str
    bootstrap_servers: str
    feature_store: str | None
    topics: dict[str, int] = field(default_factory=dict)
    child_pids: list[int] = field(default_factory=list)   # broker, plasma store
    ready: bool = False

    def write(self, state_dir: Path) -> None:
        tmp = state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(state_dir / STATE_FILE)

    @staticmethod
    def read(state_dir: Path) -> "DevState | None":
        try:
            return DevState(**json.loads((state_dir / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


@dataclass
class DevOptions:
    config: JobConfig
    config_path: str | None = None
    broker: str = "tansu"
    port: int | None = None
    plasma_socket: str | None = None
    plasma_memory: int = 512 << 20
    partitions: int = 2
    state_dir: Path = Path(DEFAULT_STATE_DIR)


def broker_port(opts: DevOptions) -> int:
    """--port, else the port of kafka.bootstrap_servers when it is on this host, else 9092."""
    if opts.port is not None:
        return opts.port
    first = opts.config.kafka.bootstrap_servers.split(",")[0]
    parts = urlsplit("//" + first)
    if parts.hostname in ("127.0.0.1", "localhost") and parts.port is not None:
        return parts.port
    return DEFAULT_PORT


def plasma_socket(opts: DevOptions) -> str | None:
    """--plasma-socket, else the socket of features.store when it is plasma://; None when the
    config names another kind of store (then no Plasma store is started)."""
    if opts.plasma_socket:
        return opts.plasma_socket
    store = opts.config.features.store
    if store.startswith("plasma://"):
        from connectors.feature_store.options import parse_uri
        from connectors.feature_store.plasma_store import socket_path
        return socket_path(parse_uri(store))
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(opts: DevOptions, say: Callable[[str], None], status: Callable[[str], None],
       status_interval_s: float = 2.0) -> int:
    """Start everything, print the addresses, then supervise until stopped."""
    from connectors.embedded.tansu import BrokerError
    from connectors.kafka.clients import ensure_topics

    state_dir = opts.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = DevState.read(state_dir)
    if existing and alive(existing.pid) and existing.pid != os.getpid():
        raise UserError(f"a dev stack is already up (pid {existing.pid}, broker {existing.bootstrap_servers}); "
                        f"`streamscore dev down --state-dir {opts.state_dir}` stops it")
    if opts.broker not in BROKERS:
        raise UserError(f"unknown broker {opts.broker!r}; available: {', '.join(BROKERS)}")
    stopping = {"signal": None}

    def on_term(signum, frame):
        stopping["signal"] = "SIGTERM"
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, on_term)
    with ExitStack() as stack:
        try:
            port = broker_port(opts)
            say(f"starting the embedded Kafka-compatible broker ({opts.broker}) on "
                f"127.0.0.1:{port if port else '(a free port)'}…")
            try:
                broker = BROKERS[opts.broker](port, state_dir)
            except BrokerError as exc:
                hint = "; is the port in use? --port 0 takes any free port" if port else ""
                raise UserError(f"the broker did not start: {exc}{hint}") from exc
            stack.callback(broker.stop)
            state = DevState(os.getpid(), opts.broker, broker.bootstrap_servers, None,
                             child_pids=[broker._proc.pid])
            socket = plasma_socket(opts)
            if socket:
                from connectors.feature_store import FeatureStoreError
                from connectors.embedded.plasma_server import PlasmaServer

                say(f"starting the Plasma feature store on {socket} ({opts.plasma_memory >> 20} MiB)…")
                try:
                    plasma = PlasmaServer(socket, opts.plasma_memory, log_path=state_dir / "plasma.log").start()
                except FeatureStoreError as exc:
                    raise UserError(f"the Plasma store could not start on {socket}: {exc}") from exc
                stack.callback(plasma.stop)
                state.child_pids.append(plasma.pid)
                name = "features"
                if opts.config.features.store.startswith("plasma://"):
                    from connectors.feature_store.options import StoreOptions, parse_uri
                    name = StoreOptions.build(parse_uri(opts.config.features.store).params).name
                state.feature_store = plasma.uri(name)
            else:
                say(f"features.store is {opts.config.features.store}: not starting a Plasma store")
            k = opts.config.kafka
            topics = {k.input_topic: opts.partitions, k.output_topic: opts.partitions, k.dead_letter_topic: 1}
            ensure_topics(broker.bootstrap_servers, topics, timeout_s=30)
            state.topics = topics
            state.ready = True
            state.write(state_dir)
            stack.callback(lambda: (state_dir / STATE_FILE).unlink(missing_ok=True))
            for line in describe(state, opts.config_path):
                say(line)
            say("Ctrl-C stops everything" if sys.stdin.isatty() else
                f"stop with `streamscore dev down --state-dir {opts.state_dir}` (or SIGTERM to pid {os.getpid()})")
            while True:
                time.sleep(status_interval_s)
                problems = [what for what, proc in (("broker", broker), ("plasma store", socket and plasma))
                            if proc and not proc.is_running()]
                if problems:
                    raise UserError(f"the {' and the '.join(problems)} exited; logs in {state_dir}")
                status(f"up · broker {broker.bootstrap_servers} · feature store "
                       f"{_store_version(state.feature_store)} · topics {', '.join(topics)}")
        except KeyboardInterrupt:
            say(f"stopping ({stopping['signal'] or 'Ctrl-C'}): broker and feature store")
        finally:
            signal.signal(signal.SIGTERM, previous)
    say("stopped")
    return 0


def _store_version(uri: str | None) -> str:
    if not uri:
        return "external"
    try:
        from connectors.feature_store import open_store
        with open_store(uri, timeout_s=1.0) as store:
            return f"version {store.version} ({len(store.schema)} features)"
    except Exception:  # noqa: BLE001 - an empty store is the normal state before `features load`
        return "empty (load a table: streamscore features load FILE --store URI)"


def describe(state: DevState, config_path: str | None) -> list[str]:
    """The addresses, and the YAML lines that point a job at them."""
    lines = [f"  broker ({state.broker}):  {state.bootstrap_servers}"]
    if state.feature_store:
        lines.append(f"  feature store:   {state.feature_store}")
    lines.append("  topics:          " + ", ".join(f"{t} ({n} partition{'s' if n > 1 else ''})"
                                                   for t, n in state.topics.items()))
    lines.append(f"put these in {config_path or 'your job YAML'}:")
    lines.append(f'  kafka:    {{bootstrap_servers: "{state.bootstrap_servers}"}}')
    if state.feature_store:
        lines.append(f'  features: {{store: "{state.feature_store}"}}')
    return lines


def up_in_background(argv: list[str], state_dir: Path, say: Callable[[str], None],
                     timeout_s: float = 60.0) -> int:
    """Run ``dev up`` (``argv`` without --background) detached; return once it is ready."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = DevState.read(state_dir)
    if existing and alive(existing.pid):
        raise UserError(f"a dev stack is already up (pid {existing.pid}, broker {existing.bootstrap_servers})")
    log_path = state_dir / "dev.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = DevState.read(state_dir)
        if state and state.ready and state.pid == proc.pid:
            for line in describe(state, None):
                say(line)
            say(f"running in the background (pid {proc.pid}, log {log_path}); "
                f"`streamscore dev down --state-dir {state_dir}` stops it")
            return 0
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()
            raise UserError(tail[-1] if tail else f"dev up exited with code {proc.returncode}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    raise UserError(f"dev up was not ready within {timeout_s:.0f} s (log: {log_path})")


def down(state_dir: Path, say: Callable[[str], None], timeout_s: float = 15.0) -> int:
    """Stop the stack ``dev up`` started (SIGTERM to its supervisor, which stops the rest)."""
    state_dir = state_dir.resolve()
    state = DevState.read(state_dir)
    if state is None or not alive(state.pid):
        say(f"no dev stack is up (no live {state_dir / STATE_FILE})")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive(state.pid):
        time.sleep(0.1)
    for pid in [state.pid, *state.child_pids]:     # whatever did not stop in time
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    say(f"stopped the dev stack (broker {state.bootstrap_servers}"
        + (f", feature store {state.feature_store})" if state.feature_store else ")"))
    return 0

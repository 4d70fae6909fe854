"""End-to-end benchmark: Kafka → enrich 32 features (Plasma) → gradient-boosting ONNX → Kafka.

Runs, in one invocation on the same data and the same embedded broker/store/model, every runner
doing the same work (consume JSON events, look up 32 features per event, score, produce one JSON
prediction per event), each read back by the same OutputReader:
  flink    the PyFlink job (MiniCluster, process mode, Arrow micro-batches, checkpoints every 2 s)
  flink-inline  the same job with features.lookup: inline (the lookup in a plain map, chained with
           polling, scoring and the sink into one Python operator) instead of PyFlink's async I/O
  flink-bundle100  the same job with flink.bundle_size: 100 (the backlog setting: faster drains, a higher p99)
  flink-eos  the same job with kafka.delivery: exactly_once (Flink's transactional KafkaSink; output
           visible to the read_committed reader only when the checkpoint commits: latency >= the
           checkpoint interval). Needs --broker kafka (Tansu's transactions do not isolate)
  flink-source  the same job with kafka.source: flink (Flink's own KafkaSource; streamscore's Java
           RecordBatcher groups records into micro-batches; one Python operator decodes each)
  loop     a plain single-process Python loop calling the same steps (the practical ceiling)
  echo     the loop's Kafka plumbing with no work: each record copied to the output as a minimal
           prediction (no features, no model): the broker's and clients' own latency, the floor
  naive    PyFlink written one event per record in Python maps (the baseline to beat 10x)
  beam     the job's steps as stock Beam transforms (Enrichment, RunInference) on the DirectRunner
  quix     Quix Streams (.venv-bench)         bytewax  Bytewax (.venv-bench)
For each: throughput draining a pre-filled topic, and event latency at a fixed input rate, with the
CPU both cost: CPU seconds per 1,000 events over the runner's whole process tree (the job's Python
process, its Flink JVM and Python workers; psutil), from the start of the drain (or of the rated
input) to the last prediction read back.
Prints a table, writes bench/results/e2e.json.

Latency is event creation (the producer stamps ``ts`` into each event as it sends it) → the
prediction read back from the output topic (stamped on arrival), on one clock (one machine), in
steady state: the first --ramp-seconds (30 s) at the same rate are left out of the percentiles and
reported as the warm-up p99 beside them; the JSON also has the p99 of every 10 s from the start and
the slowest 100 ms windows (a tail spread over the run is a slow path, a few windows are stalls).
Throughput runs drain --warm-events first, unmeasured, so every runner is measured warm.
The rate-limited producer runs in its own process and is warmed up before the clock starts (a
new idempotent producer holds its first records ~0.5 s); the reader consumes and stamps in a
child process of its own, so neither the producer nor the bench's bookkeeping delays a stamp.
The embedded broker answers a fetch only when fetch.wait.max.ms expires, so the reader fetches
with a short wait (--reader-fetch-wait-ms) to see each prediction about when a real Kafka broker
would hand it out. Hops: event→scored (``scored_ts`` in the prediction: input topic, polling,
decoding, lookup, scoring) and scored→read (encoding, producing, the output topic).

    python bench/e2e.py [--events 100000] [--rate 5000] [--latency-seconds 20] [--runners flink,loop]
    python bench/e2e.py --broker kafka --runners flink,flink-eos --out bench/results/e2e_exactly_once.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import competitors  # noqa: E402
from jobs import demo_data  # noqa: E402
from jobs.config import apply_overrides  # noqa: E402
from jobs.embedded import EmbeddedStack  # noqa: E402
from jobs.producer import produce  # noqa: E402
from jobs.tally import OutputReader, Tally  # noqa: E402


@dataclass(frozen=True)
class Runner:
    module: str                 # python -m MODULE --config job.yaml
    how: str                    # how it does the work (shown in the table)
    bench_venv: bool = False    # needs .venv-bench (make bench-deps)
    overrides: tuple = ()       # job config overrides of this runner: ((section__key, value), ...)
    needs_kafka: bool = False   # runs only on the embedded Apache Kafka (--broker kafka)
    scores: bool = True         # False: copies records without scoring (echo: the floor, not a competitor)


RUNNERS = {
    "flink": Runner("jobs.score_stream", "PyFlink job: Arrow micro-batches, async lookup; checkpoints 2 s"),
    "flink-inline": Runner("jobs.score_stream", "the PyFlink job with features.lookup inline: poll, lookup, "
                           "score and sink chained into one Python operator", overrides=(("features__lookup", "inline"),)),
    "flink-bundle100": Runner("jobs.score_stream", "the PyFlink job with flink.bundle_size 100: faster drains, a "
                              "higher p99", overrides=(("flink__bundle_size", 100),)),
    "flink-eos": Runner("jobs.score_stream", "the PyFlink job, kafka.delivery exactly_once: transactional "
                        "KafkaSink committed per checkpoint (2 s)", overrides=(("kafka__delivery", "exactly_once"),),
                        needs_kafka=True),
    "flink-source": Runner("jobs.score_stream", "the PyFlink job, kafka.source flink: Flink's KafkaSource + "
                           "a Java micro-batcher, decoded in Python", overrides=(("kafka__source", "flink"),)),
    "loop": Runner("bench.plain_loop", "one Python process, the job's steps, no engine, no checkpoints"),
    "echo": Runner("bench.echo", "the loop's polling and writer with no work: Kafka → Kafka copy (the floor)",
                   scores=False),
    "beam": Runner("jobs.beam_score", "Beam DirectRunner: stock Enrichment + RunInference over Arrow micro-batches"),
    "naive": Runner("bench.naive_flink", "PyFlink, one event per record in Python maps; checkpoints 2 s"),
    "quix": Runner("bench.quix_runner", "Quix Streams: sdf.apply per message (no batch API); commits 2 s",
                   bench_venv=True),
    "bytewax": Runner("bench.bytewax_runner", "Bytewax: flat_map_batch over source batches; recovery epochs 2 s",
                      bench_venv=True),
}
OVERRIDES: dict = {}   # --set section.key=value, applied to every runner's config
HOPS = {"event→scored": ("event_ts", "scored_ts"), "scored→read": ("scored_ts", "_arrived_ms")}
console = Console(stderr=True)


class TreeCpu:
    """CPU seconds (user + system) spent by a process and all its descendants since ``start()``:
    every process of a runner (the job's Python process, its JVM, Python worker processes)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self._at_start: dict[int, float] = {}

    def _sample(self) -> dict[int, tuple[str, float]]:
        spent = {}
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return spent
        for proc in tree:
            try:
                t = proc.cpu_times()
                spent[proc.pid] = (proc.name(), t.user + t.system + t.children_user + t.children_system)
            except psutil.NoSuchProcess:
                pass
        return spent

    def start(self) -> "TreeCpu":
        self._at_start = {pid: t for pid, (_, t) in self._sample().items()}
        return self

    def by_process(self) -> dict[str, float]:
        """CPU seconds since ``start()`` by process name (``java``, ``python``...; a process that
        exited in between is not counted)."""
        spent: dict[str, float] = {}
        for pid, (name, t) in self._sample().items():
            spent[name] = spent.get(name, 0.0) + t - self._at_start.get(pid, 0.0)
        return {name: round(t, 2) for name, t in spent.items()}


class MachineLoad:
    """What the whole machine did during a run: the 1-minute load average at its start and end, and
    the CPU busy over the run in cores (every process, the runner's included; psutil)."""

    def __init__(self) -> None:
        self._load = os.getloadavg()[0]
        self._cpu = psutil.cpu_times()
        self._t = time.monotonic()

    @staticmethod
    def _busy(t) -> float:
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    def report(self, runner_cpu_s: float | None = None) -> dict:
        busy = self._busy(psutil.cpu_times()) - self._busy(self._cpu)
        seconds = max(time.monotonic() - self._t, 1e-9)
        out = {"load_1m_start": round(self._load, 2), "load_1m_end": round(os.getloadavg()[0], 2),
               "busy_cores": round(busy / seconds, 2), "cores": psutil.cpu_count()}
        if runner_cpu_s is not None:   # what everything but the runner took meanwhile
            out["others_busy_cores"] = round(max(busy - runner_cpu_s, 0.0) / seconds, 2)
        return out


def cpu_per_1k(cpu_s: float, events: int) -> float:
    return round(cpu_s / events * 1000, 4) if events else float("nan")


def _start(stack, name: str, runner: Runner, tag: str, partitions: int = 2):
    """Start a runner on fresh topics of ``partitions`` partitions and wait until it scores warm-up events."""
    cfg = stack.job_config(f"bench-{name}-{tag}", partitions=partitions, **{**OVERRIDES, **dict(runner.overrides)})
    job, reader = stack.start_job(cfg, module=runner.module)
    return cfg, job, reader


def warm_up(stack, name: str = "flink") -> None:
    """Before the first runner: right after the stack starts, the broker is still cold (Apache Kafka
    logs "coordinator load in progress" while idempotent producers wait for their ids), and the
    first Flink job of a run pays for the JVM's and the jars' cold start; that fell on whichever
    runner came first (the later of two Flink runners had the better p99 in 7 of 8 runs, also
    after a plain-loop warm-up). One throwaway run of the Flink job on topics of its own, scoring
    a few thousand events, takes that hit. ``name``: the runner to warm up with (a run without
    Flink jobs, e.g. the floor's echo and loop, needs only the broker warm)."""
    cfg, job, reader = _start(stack, "warmup", RUNNERS[name], "warm")
    try:
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
                         demo_data.events(5000, stack.entities, seed=13, prefix="warmup"), encode=demo_data.encode)
        reader.wait_for(set(coords), timeout_s=300, stall_s=120, check=job.check_alive)
    finally:
        reader.stop()
        job.stop()


def throughput(stack, name: str, runner: Runner, n: int, partitions: int = 2, warm_events: int = 0) -> dict:
    """Fill the input topic while the runner is paused, then measure how fast it drains it.
    ``warm_events``: drained first, unmeasured, so every runner is measured warm (a JVM compiles
    its hot paths in the first tens of seconds, Python fills its caches)."""
    cfg, job, reader = _start(stack, name, runner, "tput", partitions)
    try:
        if warm_events:
            warm = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
                           demo_data.events(warm_events, stack.entities, seed=31, prefix="warm"),
                           encode=demo_data.encode)
            reader.wait_for(set(warm), timeout_s=600, stall_s=120, check=job.check_alive)
        job.pause()
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
                         demo_data.events(n, stack.entities, seed=17), encode=demo_data.encode)
        cpu = TreeCpu(job.pid).start()      # paused: nothing spent until resume
        machine = MachineLoad()
        started = time.time()
        job.resume()
        tally = reader.wait_for(set(coords), timeout_s=900, stall_s=120, check=job.check_alive)
        cpu_by_process = cpu.by_process()
        cpu_s = sum(cpu_by_process.values())
        last = tally.last_arrival_ms(set(coords))
        missing = len(tally.missing(set(coords)))
        return {"events": n, "warm_events": warm_events, "missing": missing, "seconds": round(last / 1000 - started, 3),
                "events_per_s": round(n / (last / 1000 - started), 1),
                "cpu_s": round(cpu_s, 2), "cpu_s_per_1k_events": cpu_per_1k(cpu_s, n), "cpu_s_by_process": cpu_by_process,
                "partitions": partitions, "machine": machine.report(cpu_s)}
    finally:
        reader.stop()
        job.stop()


def _percentiles(values: np.ndarray) -> dict:
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p90_ms": round(float(np.percentile(values, 90)), 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2), "max_ms": round(float(values.max()), 2)}


def latency_stats(tally: Tally, inputs: list[str]) -> dict:
    """Percentiles of the end-to-end latency and of each hop, over the predictions of ``inputs``."""
    predictions = [tally.predictions[k] for k in inputs if k in tally.predictions]
    if not predictions:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "hops": {}}

    def column(field: str) -> np.ndarray:
        return np.array([p[field] for p in predictions], dtype=np.float64)

    stats = _percentiles(column("_arrived_ms") - column("event_ts"))
    stats["hops"] = {hop: _percentiles(column(b) - column(a)) for hop, (a, b) in HOPS.items()}
    stats["slowest_windows"] = slowest_windows(column("event_ts"), column("_arrived_ms") - column("event_ts"))
    return stats


SLICE_S = 10


def p99_by_slice(tally: Tally, inputs: list[str], per_slice: int) -> list[float | None]:
    """The p99 of each consecutive ``per_slice`` inputs (``SLICE_S`` seconds at the rate), ramp
    included: how long a runner takes to settle (a JVM compiles its hot paths in the first tens of
    seconds)."""
    out = []
    for start in range(0, len(inputs), per_slice):
        values = tally.latencies_ms(set(inputs[start:start + per_slice]))
        out.append(round(float(np.percentile(values, 99)), 1) if len(values) else None)
    return out


def slowest_windows(event_ts: np.ndarray, latency_ms: np.ndarray, window_ms: float = 100, top: int = 8) -> dict:
    """Where a tail comes from: the run cut into ``window_ms`` windows of event time, the ``top``
    windows with the highest latency (seconds since the first event, their max and p50), and how
    many windows had any event above 50 ms. A tail spread over every window is a slow path; a
    few windows are stalls (a pause in one process: GC, a checkpoint, a poll that waited)."""
    windows = ((event_ts - event_ts.min()) // window_ms).astype(np.int64)
    order = np.argsort(windows, kind="stable")
    ids, starts = np.unique(windows[order], return_index=True)
    groups = np.split(latency_ms[order], starts[1:])
    worst = sorted(zip(ids, groups), key=lambda g: -g[1].max())[:top]
    return {"window_ms": window_ms, "windows": len(ids),
            "windows_above_50ms": int(sum(g.max() > 50 for g in groups)),
            "top": [{"at_s": round(i * window_ms / 1000, 1), "max_ms": round(float(g.max()), 1),
                     "p50_ms": round(float(np.median(g)), 1), "events": len(g)} for i, g in worst],
            "max_ms_by_window": [round(float(g.max())) for g in groups]}


def latency(stack, name: str, runner: Runner, rate: float, seconds: float, ramp_seconds: float,
            reader_fetch_wait_ms: int, partitions: int = 2) -> dict:
    """Events at ``rate`` for ``ramp_seconds`` + ``seconds`` from a producer process; the latency of
    each prediction after the ramp (every event must still come out). The producer and the reader
    that stamps arrivals are processes of their own: neither shares this process's GIL."""
    cfg, job, warm_reader = _start(stack, name, runner, "lat", partitions)
    warm_reader.stop()
    k = cfg.kafka
    reader = OutputReader(k.bootstrap_servers, k.output_topic, k.dead_letter_topic,
                          {**k.consumer, "fetch.wait.max.ms": reader_fetch_wait_ms}, isolated=True).start()
    try:   # the isolated reader is up once it reads fresh predictions
        warm = produce(k.bootstrap_servers, k.input_topic, demo_data.events(10, stack.entities, seed=23, prefix="warmup"),
                       encode=demo_data.encode)
        reader.wait_for(set(warm), timeout_s=120, stall_s=120, check=job.check_alive)
        n, ramp = int(rate * seconds), int(rate * ramp_seconds)
        cpu = TreeCpu(job.pid).start()
        machine = MachineLoad()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as producer:
            coords = producer.submit(produce, k.bootstrap_servers, k.input_topic,
                                     demo_data.events(ramp + n, stack.entities, seed=19), rate=rate,
                                     encode=demo_data.encode,
                                     warm_up=demo_data.events(5, stack.entities, seed=29, prefix="warmup")).result()
        tally = reader.wait_for(set(coords), timeout_s=600, stall_s=120, check=job.check_alive)
        cpu_by_process = cpu.by_process()
        cpu_s = sum(cpu_by_process.values())
        ramp_stats = latency_stats(tally, coords[:ramp]) if ramp else {}
        by_slice = p99_by_slice(tally, coords, int(rate * SLICE_S))
        return {"rate_eps": rate, "events": n, "missing": len(tally.missing(set(coords))),
                "cpu_s": round(cpu_s, 2), "cpu_s_per_1k_events": cpu_per_1k(cpu_s, len(coords)),
                "cpu_s_by_process": cpu_by_process, "partitions": partitions, "machine": machine.report(cpu_s),
                **latency_stats(tally, coords[ramp:]),
                "ramp": {"events": ramp, "seconds": ramp_seconds,
                         **{key: v for key, v in ramp_stats.items() if key not in ("hops", "slowest_windows")}},
                f"p99_ms_by_{SLICE_S}s_from_start": by_slice}
    finally:
        reader.stop()
        job.stop()


def _selected(names: str, broker: str) -> dict[str, Runner]:
    chosen = {}
    for name in names.split(","):
        if name not in RUNNERS:
            raise SystemExit(f"unknown runner {name!r}; choose from {', '.join(RUNNERS)}")
        if RUNNERS[name].needs_kafka and broker != "kafka":
            raise SystemExit(f"{name} needs the embedded Apache Kafka: add --broker kafka")
        if RUNNERS[name].bench_venv and not competitors.venv_ready():
            console.print(f"[yellow]{name}: skipped[/] ({competitors.VENV.name} missing: run `{competitors.SETUP}`)")
            continue
        chosen[name] = RUNNERS[name]
    return chosen


def _ratio(results: dict, a: str, b: str) -> float | None:
    x = results.get(a, {}).get("throughput", {}).get("events_per_s")
    y = results.get(b, {}).get("throughput", {}).get("events_per_s")
    return round(x / y, 3) if x and y and x == x and y == y else None


def targets(results: dict) -> dict:
    """The project's targets, met or not (None: a runner needed for it did not run)."""
    flink = results.get("flink", {})
    p99 = flink.get("latency", {}).get("p99_ms")
    out = {"flink_vs_loop >= 0.5": _ratio(results, "flink", "loop"),
           "flink_vs_naive >= 10": _ratio(results, "flink", "naive"),
           "flink p99 <= 50 ms": p99}
    checks = {"flink_vs_loop >= 0.5": lambda v: v >= 0.5, "flink_vs_naive >= 10": lambda v: v >= 10,
              "flink p99 <= 50 ms": lambda v: v <= 50}
    for other in ("quix", "bytewax", "beam"):
        out[f"flink_vs_{other} > 1"] = _ratio(results, "flink", other)
        checks[f"flink_vs_{other} > 1"] = lambda v: v > 1
    return {key: {"value": v, "met": None if v is None else bool(checks[key](v))} for key, v in out.items()}


def floor(results: dict, broker: str) -> dict | None:
    """The latency floor on this broker: the echo runner's p50/p99 (broker, clients, polling: no
    work) and the plain loop's (+ the job's steps, no engine), with the machine load of each run."""
    out = {}
    for name in ("echo", "loop"):
        lat = results.get(name, {}).get("latency")
        if lat:
            out[name] = {"p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "machine": lat.get("machine")}
    return {"broker": broker, **out} if out else None


def print_report(results: dict, runners: dict[str, Runner], rate: float, met: dict,
                 broker: str = "tansu") -> None:
    out = Console(width=200)
    table = Table(title="end to end: Kafka → Plasma (32 features) → GBM ONNX → Kafka")
    for col in ("runner", "events/s", "vs loop", "CPU s/1k ev", f"p50 ms @{rate:.0f}/s", f"p99 ms @{rate:.0f}/s",
                "p99 ms warm-up",
                f"CPU s/1k ev @{rate:.0f}/s", "missing", "load (busy cores) drain / rated", "how"):
        table.add_column(col, justify="left" if col == "how" else "right")

    def cpu(run: dict) -> str:
        value = run.get("cpu_s_per_1k_events")
        return "-" if value is None or value != value else f"{value:.3f}"

    def load(run: dict) -> str:
        m = run.get("machine")
        return "-" if not m else f"{m['load_1m_end']:.1f} ({m['busy_cores']:.1f})"

    for name, r in results.items():
        eps, lat = r["throughput"]["events_per_s"], r["latency"]
        ratio = _ratio(results, name, "loop")
        table.add_row(name, f"{eps:,.0f}", "-" if ratio is None else f"{ratio:.2f}", cpu(r["throughput"]),
                      str(lat["p50_ms"]), str(lat["p99_ms"]), str(lat.get("ramp", {}).get("p99_ms", "-")), cpu(lat),
                      str(r["throughput"]["missing"] + lat["missing"]), f"{load(r['throughput'])} / {load(lat)}",
                      runners[name].how)
    out.print(table)
    hops = Table(title=f"latency by hop at {rate:.0f} events/s, p50 / p99 ms")
    hops.add_column("runner")
    for hop in HOPS:
        hops.add_column(hop, justify="right")
    for name, r in results.items():
        h = r["latency"].get("hops", {})
        hops.add_row(name, *(f"{h[x]['p50_ms']} / {h[x]['p99_ms']}" if x in h else "-" for x in HOPS))
    out.print(hops)
    out.print("CPU s/1k ev = CPU seconds (user + system) of every process of the runner (JVM and Python "
              "workers included) per 1,000 events, over the drain / the rated run.")
    out.print("latency = event creation (producer stamp) → prediction read back (reader stamp), one clock, "
              "after a ramp at the same rate; event→scored includes the input topic and polling, scored→read "
              "the output topic. Timings depend on what else the machine runs: load = 1-minute load average at "
              "the run's end, busy cores = the machine's CPU use over the run (all processes).")
    low = floor(results, broker)
    if low:
        parts = [f"{name} p50 {low[name]['p50_ms']} / p99 {low[name]['p99_ms']} ms" for name in ("echo", "loop")
                 if name in low]
        out.print(f"floor on {broker} at {rate:.0f}/s: " + "; ".join(parts) + " (echo: broker + clients + polling, "
                  "no work; loop: + the job's steps, no engine)")
    for key, t in met.items():
        if t["value"] is not None:
            out.print(f"target {key}: {t['value']} — {'met' if t['met'] else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events for the throughput runs")
    parser.add_argument("--warm-events", type=int, default=50_000,
                        help="events each throughput run drains first, unmeasured (warm-up)")
    parser.add_argument("--rate", type=float, default=5000, help="input rate of the latency runs (events/s)")
    parser.add_argument("--latency-seconds", type=float, default=20, help="duration of the latency runs")
    parser.add_argument("--ramp-seconds", type=float, default=30,
                        help="the latency runs start with this long at the same rate, left out of the "
                             "steady-state percentiles and reported on their own (warm-up: the JVMs compile "
                             "their hot paths; the Flink job's tail settles 20-35 s after it starts on this "
                             "2-core box); their events must still come out")
    parser.add_argument("--runners", default=",".join(n for n, r in RUNNERS.items() if not r.needs_kafka),
                        help=f"comma-separated subset of {', '.join(RUNNERS)} (default: all but flink-eos)")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu",
                        help="the embedded broker: tansu (default) or kafka (Apache Kafka 4.x; flink-eos needs it)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="job config override for every runner, e.g. batch.poll_timeout_ms=10 or "
                             "kafka.consumer.fetch.wait.max.ms=10")
    parser.add_argument("--skip-throughput", action="store_true", help="only the latency runs")
    parser.add_argument("--skip-latency", action="store_true", help="only the throughput runs")
    parser.add_argument("--warm-up-runner", default="flink", choices=sorted(RUNNERS),
                        help="the throwaway run before the measured ones (default flink: the JVM's and the "
                             "broker's cold start; echo is enough for runs without Flink jobs)")
    parser.add_argument("--partitions", type=int, default=2, help="input topic partitions of every run (default 2)")
    parser.add_argument("--reader-fetch-wait-ms", type=int, default=5,
                        help="fetch.wait.max.ms of the reader that stamps arrivals (the embedded broker "
                             "holds every fetch this long; below ~3 ms its fetches stall, see "
                             "connectors/kafka/clients.py)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "e2e.json")
    args = parser.parse_args()
    for section, values in apply_overrides({}, args.set).items():
        OVERRIDES.update({f"{section}__{key}": value for key, value in values.items()})
    runners = _selected(args.runners, args.broker)
    results: dict[str, dict] = {}
    with EmbeddedStack(say=lambda m: console.print(m), broker=args.broker) as stack:
        console.print(f"warming the stack up (a throwaway run of {args.warm_up_runner})…")
        warm_up(stack, args.warm_up_runner)
        for name, runner in runners.items():
            results.setdefault(name, {})["throughput"] = {"events_per_s": float("nan"), "missing": 0}
            if not args.skip_throughput:
                console.print(f"[bold]{name}[/]: throughput over {args.events:,} events…")
                results[name]["throughput"] = throughput(stack, name, runner, args.events, args.partitions,
                                                           args.warm_events)
            results[name]["latency"] = {"p50_ms": float("nan"), "p99_ms": float("nan"), "missing": 0, "hops": {}}
            if args.skip_latency:
                continue
            console.print(f"[bold]{name}[/]: latency at {args.rate:,.0f} events/s for "
                          f"{args.ramp_seconds:.0f} + {args.latency_seconds:.0f} s…")
            results[name]["latency"] = latency(stack, name, runner, args.rate, args.latency_seconds,
                                               args.ramp_seconds, args.reader_fetch_wait_ms, args.partitions)
            lat = results[name]["latency"]
            slow = lat.get("slowest_windows")
            if slow:
                console.print(f"  p99 {lat['p99_ms']} ms (warm-up {lat['ramp'].get('p99_ms', '-')} ms); p99 per "
                              f"{SLICE_S} s from the start: {lat[f'p99_ms_by_{SLICE_S}s_from_start']}; "
                              f"{slow['windows_above_50ms']} of {slow['windows']} windows of {slow['window_ms']:.0f} "
                              "ms had an event above 50 ms")
    met = targets(results)
    print_report(results, runners, args.rate, met, args.broker)
    report = {"benchmark": "e2e", "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                              "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
              "settings": vars(args) | {"out": str(args.out)},
              "runners": {name: {"module": r.module, "how": r.how} for name, r in runners.items()},
              "results": results, "targets": met, "floor": floor(results, args.broker)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

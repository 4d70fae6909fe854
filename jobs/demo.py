"""The demo: the scoring job end to end on embedded defaults, with a live progress line, a
summary table, and one JSON object as the very last line.

The job follows a registry (SQLite in the demo's folder unless ``--registry`` names another):
two versions of the demo model are registered with the feature snapshot they were trained on,
version 1 is the production champion when the job starts, version 2 is promoted mid-run. The
host's Plasma store is materialized from the registry snapshot (no ``features load``).

``--experiment``: no promotion; the events get a text field ``channel`` (pos, app, web) and the job
two routes on it: ``card`` (pos and app) to the followed champion, beside which version 2 runs as a
shadow and a third version as a canary for 10 % of the entities, and ``web`` to the mean of the two
demo model files. The demo prints the in-stream comparison and events per route, and writes the
comparison's HTML report."""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from jobs import demo_data
from jobs.config import ModelSettings, RouteCondition, RouteSettings
from jobs.embedded import EmbeddedStack
from jobs.flink_rest import FlinkRest
from jobs.producer import produce
from jobs.tally import Tally


@dataclass
class DemoOptions:
    events: int = 20_000
    rate: float = 5000.0          # events/s produced; 0 = as fast as possible
    entities: int = 100_000
    partitions: int = 2
    parallelism: int = 1
    bad_fraction: float = 0.01    # share of malformed / unknown-entity events (dead-lettered)
    timeout_s: float = 900.0
    workdir: Path | None = None
    broker: str = "tansu"         # embedded broker: tansu | kafka (Apache Kafka)
    registry: str | None = None   # registry URI; None: a SQLite file in the demo's folder
    promote_at: float = 0.5       # share of the events produced when version 2 is promoted
    experiment: bool = False      # instead of the mid-run promotion: version 2 as shadow, a canary
    canary_share: float = 0.1     # experiment: the canary's share of the entities
    html: Path | None = None      # experiment: where the comparison report goes (default: the workdir)


DEMO_MODEL = "demo-fraud"         # the registered model the demo job follows
DEMO_ENV = "production"
DEMO_SNAPSHOT = "demo-features"
DEMO_ACTOR = "streamscore-demo"


@dataclass
class DemoRegistry:
    """The demo's registry and what it registered."""
    registry: object              # registry.Registry
    uri: str
    first: int                    # the version serving at the start
    second: int                   # the version promoted mid-run
    snapshot: str                 # name@version of the pinned feature snapshot


def prepare_registry(stack: EmbeddedStack, uri: str | None = None, say=print) -> DemoRegistry:
    """Register the demo's feature snapshot (Parquet in the demo folder standing for durable
    storage) and two model versions trained on it; version 1 becomes champion in every environment,
    version 2 in integration and qa (production requires it: it is promoted there mid-run). The
    host's Plasma store is then materialized from the pinned snapshot."""
    from registry import open_registry, write_dataset
    from registry.materialize import HostMaterializer

    uri = uri or f"sqlite:///{stack.workdir / 'registry.db'}"
    reg = open_registry(uri, cache_dir=stack.workdir / "registry-cache")
    reg.init()
    who = dict(actor=DEMO_ACTOR)
    durable = stack.workdir / "durable"
    durable.mkdir(exist_ok=True)
    snap = reg.register_snapshot(DEMO_SNAPSHOT, write_dataset(stack.features, str(durable), DEMO_SNAPSHOT),
                                 key_column="entity_id", reason="the demo's customer features", **who)
    versions = []
    for version in ("1", "2"):
        iterations, depth = demo_data.DEMO_MODEL_PARAMS[version]
        mv = reg.register_model(DEMO_MODEL, str(demo_data.demo_model(stack.entities, version=version)),
                                feature_set=snap, reason=f"demo model {version}",
                                metadata={"trainer": "HistGradientBoostingClassifier", "max_iter": iterations,
                                          "max_depth": depth}, **who)
        versions.append(mv.version)
    first, second = versions
    for env in ("integration", "qa", DEMO_ENV):
        reg.promote(DEMO_MODEL, first, env, reason="the demo starts with it", **who)
    for env in ("integration", "qa"):
        reg.promote(DEMO_MODEL, second, env, reason="candidate; production takes it mid-run", **who)
    say(f"  registry {reg!r}: {DEMO_MODEL} versions {first} and {second}, snapshot {snap.ref}; "
        f"{DEMO_ENV} champion: version {first}")
    HostMaterializer(stack.feature_uri, reg).ensure(reg.deployment(DEMO_MODEL, DEMO_ENV))
    say(f"  materialized {snap.ref} ({snap.row_count:,} rows) into this host's Plasma store from the registry")
    return DemoRegistry(reg, uri, first, second, snap.ref)


def start_experiment(demo_registry: DemoRegistry, share: float, say=print) -> int:
    """Version 2 as a shadow of the production champion, and a third version (version 2's
    artifact registered again) as the canary serving ``share`` of the entities: the canary's
    version."""
    reg = demo_registry.registry
    who = dict(actor=DEMO_ACTOR)
    first = reg.model_version(DEMO_MODEL, demo_registry.second)
    canary = reg.register_model(DEMO_MODEL, first.uri, feature_set=reg.snapshot(demo_registry.snapshot),
                                reason="the demo's canary (version 2's model)", **who)
    reg.promote(DEMO_MODEL, demo_registry.second, DEMO_ENV, role="shadow", reason="the demo's shadow", **who)
    reg.promote(DEMO_MODEL, canary.version, DEMO_ENV, role="canary", share=share, reason="the demo's canary", **who)
    say(f"  {DEMO_ENV}: champion version {demo_registry.first}, shadow version {demo_registry.second}, "
        f"canary version {canary.version} for {share:.0%} of the entities")
    return canary.version


def demo_records(opts: DemoOptions) -> list[dict | bytes]:
    """Good events with a sprinkling of each kind of bad event."""
    return demo_records_with_reasons(opts)[0]


def demo_records_with_reasons(opts: DemoOptions) -> tuple[list[dict | bytes], dict[int, str]]:
    """:func:`demo_records` and, per position of a bad event, the dead-letter reason it must get
    (``opts.experiment``: the events have the text field ``channel`` too)."""
    events = list(demo_data.events(opts.events, opts.entities))
    extra = None
    if opts.experiment:
        events, extra = demo_data.with_channel(events), {"channel": "pos"}
    every = int(1 / opts.bad_fraction) if opts.bad_fraction > 0 else 0
    if not every:
        return events, {}
    return demo_data.with_bad_events(events, opts.entities, every=every, start=every // 2, extra=extra)


CHAMPION_ROUTE = "card"           # demo --experiment: the route the followed champion (and its challengers) serves
COMBINED_ROUTE = "web"


def experiment_routes(entities: int) -> list[RouteSettings]:
    """The demo's two routes on the text field ``channel``: ``card`` (pos, app) to the followed
    deployment's champion, with its shadow and canary; ``web`` to the mean of the two demo model
    files (one numeric model family)."""
    files = [str(demo_data.demo_model(entities, version=v)) for v in ("1", "2")]
    return [RouteSettings(name=CHAMPION_ROUTE, when=RouteCondition(field="channel", in_=["pos", "app"]),
                          model=DEMO_MODEL),
            RouteSettings(name=COMBINED_ROUTE, when=RouteCondition(field="channel", equals="web"),
                          models=files, combine="mean")]


def route_of(prediction: dict) -> str:
    """Which of the demo's routes scored a prediction, from the model it names (a combination of
    the two files for ``web``, the registered model for ``card``)."""
    return CHAMPION_ROUTE if prediction.get("model") == DEMO_MODEL else \
        COMBINED_ROUTE if "+" in str(prediction.get("model")) else "other"


LATENCY_WARMUP_S = 2.0            # the latency line leaves out events created in the first 2 s (the bench's ramp)


def steady_state_latency(tally: Tally, inputs: set[str], started: float,
                         warmup_s: float = LATENCY_WARMUP_S) -> dict:
    """p50/p99 of event creation → prediction read back, over the predictions of ``inputs`` whose
    event was created at least ``warmup_s`` after ``started`` (epoch s: when production began):
    the first seconds at full load (JIT, buffers, first batches) are left out, as in the bench.
    A run shorter than the warm-up is measured over all its events, and says so
    (``latency_warmup_s`` 0). ``latency_events``: how many predictions the percentiles cover."""
    arrived = {k: p for k, p in tally.predictions.items() if k in inputs}
    cutoff_ms = (started + warmup_s) * 1000.0
    steady = [p["_arrived_ms"] - p["event_ts"] for p in arrived.values() if p["event_ts"] >= cutoff_ms]
    if not steady:
        warmup_s, steady = 0.0, [p["_arrived_ms"] - p["event_ts"] for p in arrived.values()]
    lat = np.asarray(steady, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "latency_warmup_s": warmup_s, "latency_events": len(lat)}


def latency_line(summary: dict) -> str:
    """The demo's latency line: the steady-state percentiles and which events they cover."""
    if summary.get("p50_ms") is None:
        return "latency: no predictions"
    window = (f"events created after the first {summary['latency_warmup_s']:g} s"
              if summary["latency_warmup_s"] else "all events: the run was shorter than the warm-up")
    return (f"latency event → prediction read back ({window}; {summary['latency_events']:,} of "
            f"{summary['predictions_out']:,} predictions; the job's JVM is still compiling its hot paths "
            f"in a run this short, bench/e2e.py's steady state starts 30 s in): p50 {summary['p50_ms']:,.1f} ms, "
            f"p99 {summary['p99_ms']:,.1f} ms")


def summarize(tally: Tally, inputs: list[str], started: float, opts: DemoOptions) -> dict:
    wanted = set(inputs)
    last = tally.last_arrival_ms(wanted)
    elapsed_s = last / 1000.0 - started if last else 0.0
    predicted = len(wanted & set(tally.predictions))
    dead = len(wanted & set(tally.dead_letters))
    return {
        "events_in": len(inputs),
        "predictions_out": predicted,
        "dead_letters": dead,
        "missing": len(tally.missing(wanted)),
        "duplicates": tally.duplicate_predictions + tally.duplicate_dead_letters,
        "dead_letter_reasons": dict(sorted(tally.reasons().items())),
        "throughput_eps": round(len(inputs) / elapsed_s, 1) if elapsed_s > 0 else None,
        **steady_state_latency(tally, wanted, started),
        "rate_target_eps": opts.rate or None,
        "per_version": tally.per_version(wanted),
        "switches_per_partition": {p: len(s) for p, s in tally.version_switches(wanted).items()},
    }


def run_demo(opts: DemoOptions, console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    say = console.print
    with EmbeddedStack(opts.workdir, opts.entities, say=say, broker=opts.broker, load_features=False) as stack:
        say("preparing the registry…")
        demo_registry = prepare_registry(stack, opts.registry, say)
        canary_version = start_experiment(demo_registry, opts.canary_share, say) if opts.experiment else None
        cfg = stack.job_config("demo", opts.partitions, flink__parallelism=opts.parallelism)
        cfg.model = ModelSettings(registry=demo_registry.uri, name=DEMO_MODEL, env=DEMO_ENV,
                                  comparison_window_s=EXPERIMENT_WINDOW_S if opts.experiment else 10.0)
        warmup = None
        if opts.experiment:
            from connectors.kafka.clients import ensure_topics
            from jobs.config import JobConfig

            cfg.events.fields = {**cfg.events.fields, "channel": "string"}
            cfg.routes = experiment_routes(opts.entities)
            cfg = JobConfig.model_validate(cfg.model_dump())        # checked here, not in the job's process
            warmup = demo_data.with_channel(demo_data.events(20, opts.entities, seed=99, prefix="warmup"))
            ensure_topics(cfg.kafka.bootstrap_servers, {cfg.kafka.shadow_topic_name(): opts.partitions,
                                                        cfg.kafka.comparison_topic_name(): 1})
            say(f"  routes on the text field channel: {CHAMPION_ROUTE} (pos, app) → the {DEMO_MODEL} champion "
                f"with its shadow and canary; {COMBINED_ROUTE} → the mean of the demo model files v1 and v2")
        with console.status("starting the scoring job in a local Flink MiniCluster (JVM, Python workers)…"):
            job, reader = stack.start_job(cfg, warmup=warmup)
        say(f"the scoring job is up (log: {job.log_path})")
        try:
            records = demo_records(opts)
            produced = {"n": 0}
            inputs: list[str] = []
            started = time.time()

            def producer():
                inputs.extend(produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records,
                                      rate=opts.rate or None, encode=demo_data.encode,
                                      on_progress=lambda n: produced.__setitem__("n", n)))
            thread = threading.Thread(target=producer, daemon=True)
            thread.start()
            promote_after = int(len(records) * opts.promote_at)
            promoted = False
            with Live(console=console, refresh_per_second=4, transient=True) as live:
                while thread.is_alive():
                    if not promoted and produced["n"] >= promote_after and not opts.experiment:
                        demo_registry.registry.promote(DEMO_MODEL, demo_registry.second, DEMO_ENV, actor=DEMO_ACTOR,
                                                       reason="mid-run promotion by the demo")
                        promoted = True
                        console.print(f"promoted {DEMO_MODEL} version {demo_registry.second} to {DEMO_ENV} "
                                      f"after {produced['n']:,} events")
                    snap = reader.snapshot()
                    versions = Counter(p["model_version"] for p in snap.predictions.values()
                                       if not p["event_id"].startswith("warmup-"))
                    by_version = " ".join(f"v{v} {n:,}" for v, n in sorted(versions.items()))
                    live.update(f"produced {produced['n']:,}/{len(records):,} · predictions "
                                f"{sum(versions.values()):,} ({by_version}) · dead letters {len(snap.dead_letters):,}")
                    job.check_alive()
                    time.sleep(0.25)
                thread.join()
                if not promoted and not opts.experiment:   # a tiny run: promote now, the rest by version 2
                    demo_registry.registry.promote(DEMO_MODEL, demo_registry.second, DEMO_ENV, actor=DEMO_ACTOR,
                                                   reason="promotion by the demo")

                def progress(snap, done):
                    live.update(f"produced {len(records):,}/{len(records):,} · accounted {done:,}/{len(inputs):,}")
                tally = reader.wait_for(set(inputs), timeout_s=opts.timeout_s, stall_s=120,
                                        on_progress=progress, check=job.check_alive)
            summary = summarize(tally, inputs, started, opts)
            if opts.experiment:
                del summary["switches_per_partition"]       # the canary's entities interleave by design
                summary.update(experiment_summary(stack, cfg, reader, tally, inputs, demo_registry, canary_version,
                                                  opts, say))
            summary["job_metrics"] = output_metrics(job.rest())
            summary["features"] = sorted({tally.predictions[c].get("features") for c in inputs
                                          if c in tally.predictions})
            summary["registry_history"] = [
                f"{e.action} {e.from_version or '-'} -> {e.to_version or '-'} ({e.env or ''}: {e.reason})"
                for e in reversed(demo_registry.registry.history(DEMO_MODEL, env=DEMO_ENV, limit=10))]
            return summary
        finally:
            reader.stop()
            job.stop()
            demo_registry.registry.close()


EXPERIMENT_WINDOW_S = 2.0         # the demo's comparison window (short: a run takes seconds)


def experiment_summary(stack, cfg, reader, tally: Tally, inputs: list[str], demo_registry: DemoRegistry,
                       canary_version: int, opts: DemoOptions, say) -> dict:
    """Close the last comparison window (a few trailing events after it ends), wait until the
    registry has every window, and sum up: events compared and agreement per challenger, the
    canary's observed share, the HTML report."""
    from jobs.experiment_report import render_html
    from operators.experiments import merge_windows

    reg = demo_registry.registry
    time.sleep(EXPERIMENT_WINDOW_S)
    trailing = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,     # on the champion's route
                       demo_data.with_channel(demo_data.events(10, opts.entities, seed=5, prefix="warmup-trailing"),
                                              channels=("pos",)), encode=demo_data.encode)
    reader.wait_for(set(trailing), timeout_s=60)
    stable_since, last = time.monotonic(), None
    while time.monotonic() - stable_since < 3 * cfg.model.follow_interval_s + 1:   # the follower records them
        now = [len(reg.comparisons(DEMO_MODEL, DEMO_ENV, v)) for v in (demo_registry.second, canary_version)]
        if now != last:
            stable_since, last = time.monotonic(), now
        time.sleep(0.2)
    challengers = {}
    for role, version in (("shadow", demo_registry.second), ("canary", canary_version)):
        windows = reg.comparisons(DEMO_MODEL, DEMO_ENV, version)
        if windows:
            challengers[role] = (version, windows, merge_windows(windows))
    served = [tally.predictions[c] for c in inputs if c in tally.predictions]
    per_route = Counter(route_of(p) for p in served)
    on_champion_route = [p for p in served if route_of(p) == CHAMPION_ROUTE]      # where the canary serves
    out = {"canary_share_observed": round(sum(p["role"] == "canary" for p in on_champion_route) /
                                          len(on_champion_route), 4) if on_champion_route else None,
           "canary_share_target": opts.canary_share, "comparison": {},
           "per_route": {route: per_route.get(route, 0) for route in (CHAMPION_ROUTE, COMBINED_ROUTE)}
           | {route: n for route, n in per_route.items() if route not in (CHAMPION_ROUTE, COMBINED_ROUTE)}}
    for role, (version, windows, total) in challengers.items():
        out["comparison"][role] = {k: total[k] for k in ("champion", "challenger", "windows", "compared",
                                                         "agreement", "score_diff_mean", "psi")}
    shadow = out["comparison"].get("shadow", {})
    out["shadow_compared"] = shadow.get("compared", 0)
    out["agreement"] = round(shadow["agreement"], 4) if shadow.get("agreement") is not None else None
    if "shadow" in challengers:
        version, windows, total = challengers["shadow"]
        path = opts.html or (opts.workdir / "experiment-report.html" if opts.workdir else
                             Path("experiment-report.html"))       # a temporary workdir is removed
        path.write_text(render_html(windows, f"{DEMO_MODEL} in {DEMO_ENV}: {total['champion']} vs "
                                             f"{total['challenger']} (shadow)"))
        out["html_report"] = str(path)
        say(f"comparison report written to {path}")
    return out


_OUTPUT_METRIC = re.compile(r"\.(predictions_out|dead_letters_out|dead_letters\.\w+|shadow_skipped|"
                            r"shadow_batches|canary_served|shadow_predictions_out|comparisons_out|"
                            r"route_\w+_events|no_route)$")


def output_metrics(rest: FlinkRest) -> dict[str, float]:
    """The job's own counters of what it wrote (``predictions_out``, ``dead_letters_out``,
    ``dead_letters.<reason>``), read from its Flink REST API; {} when it cannot be reached."""
    try:
        return rest.operator_totals(_OUTPUT_METRIC)
    except (OSError, ValueError, KeyError):
        return {}


def render(summary: dict, console: Console) -> None:
    table = Table(title="streamscore demo")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("events_in", "predictions_out", "dead_letters", "missing", "duplicates", "throughput_eps"):
        table.add_row(key, str(summary[key]))
    after = f" (after {summary['latency_warmup_s']:g} s)" if summary.get("latency_warmup_s") else " (all events)"
    for key in ("p50_ms", "p99_ms"):
        table.add_row(key + after, str(summary[key]))
    for reason, count in summary["dead_letter_reasons"].items():
        table.add_row(f"  dead letters: {reason}", str(count))
    for version, count in summary.get("per_version", {}).items():
        table.add_row(f"  predictions by model version {version}", f"{count:,}")
    for partition, switches in summary.get("switches_per_partition", {}).items():
        table.add_row(f"  version switches in {partition}", str(switches))
    if summary.get("features"):
        table.add_row("  feature snapshot", ", ".join(map(str, summary["features"])))
    for name, value in summary.get("job_metrics", {}).items():
        table.add_row(f"job metric {name}", f"{value:,.0f}")
    for line in summary.get("registry_history", []):
        table.add_row("registry history", line)
    console.print(table)
    console.print(latency_line(summary))
    if summary.get("comparison"):
        comparison = Table(title="challengers against the champion (in-stream comparison, from the registry)")
        for col in ("role", "champion", "challenger", "windows", "compared", "agreement", "|diff| mean", "PSI"):
            comparison.add_column(col, justify="left" if col in ("role", "champion", "challenger") else "right")
        for role, c in summary["comparison"].items():
            comparison.add_row(role, c["champion"], c["challenger"], str(c["windows"]), f"{c['compared']:,}",
                               *(("n/a" if c[k] is None else f"{c[k]:.4f}") for k in ("agreement", "score_diff_mean",
                                                                                       "psi")))
        console.print(comparison)
        console.print(f"canary share observed {summary['canary_share_observed']} of the {CHAMPION_ROUTE} route's "
                      f"events (target {summary['canary_share_target']}); report: {summary.get('html_report')}")
    if summary.get("per_route"):
        console.print("predictions per route: " + ", ".join(f"{route} {n:,}" for route, n in
                                                            summary["per_route"].items()))


def to_json_line(summary: dict) -> str:
    keys = ("events_in", "predictions_out", "dead_letters", "throughput_eps", "p50_ms", "p99_ms", "latency_warmup_s",
            "latency_events", "per_version",
            "shadow_compared", "agreement", "canary_share_observed", "per_route")
    return json.dumps({k: summary[k] for k in keys if k in summary})

"""What a shadow costs the champion: the served path's time per micro-batch with no challenger,
a healthy shadow, a shadow that raises on every batch and one that sleeps 2 s per batch.

    .venv/bin/python bench/shadow_overhead.py [--batches 3000] [--batch-events 200] [--budget-ms 200]

Runs ``operators.experiments.ExperimentScorer`` (what the Flink and Beam scorers run per batch)
on enriched micro-batches of the demo events with the demo model (ONNX), in one process, without
an engine or a broker: the figure is the time ``score`` takes to return the served result, i.e.
what a micro-batch's latency gains from its shadows. The scenarios run interleaved, round after
round, so a change in the machine's load hits them alike; the served rows of every batch are
checked to equal the champion-only ones. Prints a table, writes bench/results/shadow_overhead.json.

The champion waits for its shadows up to ``--budget-ms`` from the batch's start (so a healthy
shadow's rows are compared with the same batch); a shadow past the budget is left running and
skipped while busy, and after three failures in a row it backs off (1 s doubling to 60 s). A
failing shadow therefore costs the batches it is submitted with up to the budget, and those
become rarer as the back-off grows: the p99 over a long run is what tells whether that shows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connectors.events import DecoderSpec, EventSchema  # noqa: E402
from connectors.kafka.partition_reader import RecordChunk  # noqa: E402
from jobs import demo_data  # noqa: E402
from model_formats import load_model  # noqa: E402
from model_formats.reloading import Candidate, ChallengerOffer, ChallengerPlan  # noqa: E402
from operators import steps  # noqa: E402
from operators.experiments import ExperimentScorer  # noqa: E402
from operators.steps import MissingEntityPolicy  # noqa: E402

SCHEMA = EventSchema()
ENTITIES = 100_000
SCENARIOS = ("none", "healthy", "raises", "sleeps_2s")


class Raising:
    """A shadow whose every batch raises (a model that breaks on live data)."""

    def __init__(self, model) -> None:
        self.name, self.version, self.schema = model.name, "raises", model.schema
        self._model = model

    def validate(self, batch):
        return self._model.validate(batch)

    def predict(self, batch):
        raise RuntimeError("this shadow breaks on every batch")

    def close(self) -> None:
        pass


class Sleeping(Raising):
    """A shadow that takes ``seconds`` per batch, then scores like the champion."""

    def __init__(self, model, seconds: float) -> None:
        super().__init__(model)
        self.version, self.seconds = "sleeps", seconds

    def predict(self, batch):
        time.sleep(self.seconds)
        return self._model.predict(batch)


def enriched_batches(n: int, size: int, features: pa.Table) -> list[steps.MicroBatch]:
    """Decoded micro-batches of demo events joined with their features (as the store answers)."""
    decoder = DecoderSpec(SCHEMA).build()
    names = features.column_names[1:]
    out = []
    for b in range(n):
        rng = np.random.default_rng(b)
        ids = rng.integers(0, ENTITIES, size)
        values = [demo_data.encode({"id": f"e{b}-{i}", "entity_id": int(e), "amount": float(a), "ts": 1})
                  for i, (e, a) in enumerate(zip(ids, demo_data.amounts(size, rng)))]
        batch = steps.decode(decoder, RecordChunk("in", 0, values, list(range(b * size, (b + 1) * size))))
        keys = steps.lookup_keys(batch, SCHEMA.key_field)
        rows = pa.RecordBatch.from_arrays([features.column(c).take(pa.array(keys)).combine_chunks() for c in names],
                                          names=names)
        out.append(steps.join_features(batch, rows, np.ones(len(keys), dtype=bool), MissingEntityPolicy("dead_letter")))
    return out


def scorer_for(scenario: str, model_path: Path, budget_ms: float) -> ExperimentScorer:
    loaders = {"healthy": lambda c: load_model(str(c.path), version="shadow"),
               "raises": lambda c: Raising(load_model(str(c.path))),
               "sleeps_2s": lambda c: Sleeping(load_model(str(c.path)), 2.0)}
    scorer = ExperimentScorer(SCHEMA, shadow_budget_ms=budget_ms, window_ms=3_600_000, loader=loaders.get(scenario))
    if scenario != "none":
        scorer.set_plan(ChallengerPlan((ChallengerOffer("shadow", Candidate(model_path)),), "bench"))
        deadline = time.monotonic() + 120
        while not all(c.ready() or c.error for c in scorer._challengers.values()):
            if time.monotonic() > deadline:
                raise SystemExit(f"{scenario}: the shadow did not load in 120 s")
            time.sleep(0.02)
    return scorer


def served_rows(scored) -> list:
    return [{k: v for k, v in r.items() if k != "scored_ts"} for r in scored.predictions.to_pylist()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=3000, help="micro-batches per scenario (enough for a failing "
                        "shadow's back-off to reach its steady state)")
    parser.add_argument("--batch-events", type=int, default=200, help="events per micro-batch (at 5,000 events/s the "
                        "job's micro-batches hold tens to hundreds of events)")
    parser.add_argument("--budget-ms", type=float, default=200.0, help="model.shadow_budget_ms")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shadow_overhead.json")
    args = parser.parse_args(argv)

    print(f"preparing {args.batches} batches of {args.batch_events} events and the demo model…", flush=True)
    model_path = demo_data.demo_model(ENTITIES)
    champion = load_model(str(model_path))
    batches = enriched_batches(args.batches, args.batch_events, demo_data.features_table(ENTITIES))
    expected = [served_rows(steps.score_batch(b, champion, SCHEMA)) for b in batches[:5]]
    scorers = {s: scorer_for(s, model_path, args.budget_ms) for s in SCENARIOS}
    times: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    for i, batch in enumerate(batches):          # interleaved: every scenario scores batch i in turn
        for scenario, scorer in scorers.items():
            t0 = time.perf_counter()
            served = scorer.score(batch, champion)
            times[scenario].append((time.perf_counter() - t0) * 1000.0)
            if i < len(expected) and served_rows(served) != expected[i]:
                raise SystemExit(f"{scenario}: the served rows of batch {i} differ from the champion's alone")
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(batches)} batches", flush=True)
    results = {}
    for scenario, scorer in scorers.items():
        t = np.asarray(times[scenario])
        results[scenario] = {"p50_ms": round(float(np.percentile(t, 50)), 2),
                             "p99_ms": round(float(np.percentile(t, 99)), 2),
                             "max_ms": round(float(t.max()), 2), "mean_ms": round(float(t.mean()), 2),
                             "shadow_batches": scorer.shadow_batches, "skipped": dict(scorer.skipped)}
        scorer.close()
    base = results["none"]
    for r in results.values():
        r["p99_vs_none"] = round(r["p99_ms"] / base["p99_ms"], 2)
        r["mean_vs_none"] = round(r["mean_ms"] / base["mean_ms"], 2)
    report = {"benchmark": "shadow_overhead", "batches": args.batches, "batch_events": args.batch_events,
              "shadow_budget_ms": args.budget_ms, "load_1m_start": load_start, "load_1m_end": os.getloadavg()[0],
              "cores": os.cpu_count(), "seconds": round(time.monotonic() - started, 1), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nserved path per micro-batch of {args.batch_events} events, shadow budget {args.budget_ms:g} ms "
          f"(load {load_start:.1f} → {report['load_1m_end']:.1f}, {os.cpu_count()} cores)")
    print(f"{'shadow':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8} {'p99/none':>9} "
          f"{'shadow batches':>15}  skipped")
    for scenario, r in results.items():
        skipped = {k: v for k, v in r["skipped"].items() if v}
        print(f"{scenario:>10} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f} {r['mean_ms']:8.2f} "
              f"{r['p99_vs_none']:9.2f} {r['shadow_batches']:15d}  {skipped or '-'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the model runtimes behind `model_formats`: rows/s and p50 latency per
runtime × model × batch size, in one run.

    .venv/bin/python bench/formats.py [--batch-sizes 1,64,1024,8192] [--min-time 0.3] [--onnx-threads 1]

Trains small models on synthetic data (nothing downloaded), exports each to ONNX, skops and
(where sklearn2pmml + Java are installed) PMML, then times ``model.predict`` on already-validated
batches (the runtime's cost) and ``model.validate`` separately (the shared validation's cost).
Prints a table and writes JSON to bench/results/formats.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_formats import load_model  # noqa: E402
from model_formats.export import (  # noqa: E402
    PmmlExportError, export_onnx, export_pmml, export_skops, pmml_export_available,
)

FEATURES = ["amount", "age_days", "velocity", "ratio", "f4", "f5", "f6", "f7"]


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32).astype(np.float64)
    logit = 1.5 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] * X[:, 3] + 0.3 * X[:, 4]
    y = (logit + rng.normal(scale=0.5, size=n) > 0).astype(np.int64)
    return X, y


def train(n_train: int):
    import pandas as pd
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_data(n_train, 1)
    df = pd.DataFrame(X, columns=FEATURES)
    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(df, y),
        "forest(100x8)": RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1).fit(df, y),
        "gbm(100x3)": GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(df, y),
    }


def time_calls(fn, min_time: float, max_calls: int, min_calls: int = 3) -> list[float]:
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < min_time and len(times) < max_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def batch_of(X: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(X[:, j]) for j in range(X.shape[1])], names=FEATURES)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,64,1024,8192")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timed calls per cell (at least 3 calls)")
    ap.add_argument("--max-calls", type=int, default=300)
    ap.add_argument("--onnx-threads", type=int, default=1, help="onnxruntime intra_op_num_threads")
    ap.add_argument("--train-rows", type=int, default=5000)
    ap.add_argument("--runtimes", default="onnx,sklearn,pmml")
    ap.add_argument("--pmml-fixtures", action="store_true",
                    help="where sklearn2pmml is missing, time the committed PMML test models instead "
                    "(tests/fixtures/models: logreg, forest 30x8, gbm 40x3 on 4 of the features)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "formats.json"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    runtimes = [r.strip() for r in args.runtimes.split(",")]

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    notes: list[str] = []
    console.print(f"training models on {args.train_rows} synthetic rows, {len(FEATURES)} features ...")
    estimators = train(args.train_rows)
    X, _ = make_data(max(sizes), 2)
    tmp = Path(tempfile.mkdtemp(prefix="streamscore-bench-"))
    files: dict[tuple[str, str], Path] = {}
    pmml_ok, reason = pmml_export_available()
    if "pmml" in runtimes and not pmml_ok:
        if args.pmml_fixtures:
            fixtures = ROOT / "tests" / "fixtures" / "models"
            for stem, label in (("logreg", "logreg"), ("forest", "forest(30x8)"), ("gbm", "gbm(40x3)")):
                files[("pmml", f"{label}*")] = fixtures / f"{stem}.pmml"
            notes.append("pmml rows marked * are the committed test models (sklearn2pmml missing here)")
        else:
            notes.append(f"PMML skipped: {reason}")
    for name, est in estimators.items():
        stem = name.split("(")[0]
        if "onnx" in runtimes:
            files[("onnx", name)] = export_onnx(est, FEATURES, tmp / f"{stem}.onnx", name=stem)
        if "sklearn" in runtimes:
            files[("sklearn", name)] = export_skops(est, FEATURES, tmp / f"{stem}.skops", name=stem)
        if "pmml" in runtimes and pmml_ok:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    files[("pmml", name)] = export_pmml(est, FEATURES, tmp / f"{stem}.pmml", name=stem)
                except PmmlExportError as exc:
                    notes.append(f"PMML export of {name} failed: {str(exc).splitlines()[0]}")

    results = []
    for (runtime, name), path in files.items():
        model = load_model(path, intra_op_num_threads=args.onnx_threads)
        try:
            # warm-up (JIT for the JVM, first-run allocations for the others)
            for _ in range(30 if runtime == "pmml" else 3):
                model.predict(batch_of(X[:1]))
            model.predict(batch_of(X[:1024]))
            for bs in sizes:
                rb = batch_of(X[:bs])
                valid = model.validate(rb).valid
                times = time_calls(lambda: model.predict(valid), args.min_time, args.max_calls)
                vtimes = time_calls(lambda: model.validate(rb), min(args.min_time, 0.1), args.max_calls)
                p50 = float(np.median(times))
                results.append({
                    "runtime": runtime, "model": name, "batch": bs, "calls": len(times),
                    "p50_ms": p50 * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3,
                    "rows_per_s": bs / float(np.mean(times)),
                    "validate_p50_ms": float(np.median(vtimes)) * 1e3,
                })
                r = results[-1]
                console.print(f"  {runtime:8s} {name:14s} batch {bs:5d}: p50 {r['p50_ms']:9.3f} ms  "
                              f"{r['rows_per_s']:12,.0f} rows/s  (validate {r['validate_p50_ms']:.3f} ms)")
        finally:
            model.close()

    table = Table(title=f"model runtimes: predict() on validated batches (onnxruntime intra_op_num_threads="
                        f"{args.onnx_threads}; {os.cpu_count()} CPUs, shared)")
    for col in ("runtime", "model", "batch", "p50 latency", "rows/s", "validate p50"):
        table.add_column(col, justify="right" if col not in ("runtime", "model") else "left")
    for r in results:
        table.add_row(r["runtime"], r["model"], str(r["batch"]), _ms(r["p50_ms"]), f"{r['rows_per_s']:,.0f}",
                      _ms(r["validate_p50_ms"]))
    console.print(table)
    for n in notes:
        console.print(f"[yellow]{n}[/yellow]")

    import onnxruntime
    import sklearn

    versions = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                "scikit-learn": sklearn.__version__, "pyarrow": pa.__version__, "numpy": np.__version__}
    try:
        import pypmml

        versions["pypmml"] = getattr(pypmml, "__version__", "?")
    except ImportError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "what": "model_formats predict() latency and throughput per runtime x model x batch size",
        "measured": "model.predict on an already-validated Arrow RecordBatch; validate_p50_ms is model.validate "
                    "on the same batch; latency = wall time of one call; rows_per_s = batch / mean call time",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "note": "CPU shared with other work"},
        "versions": versions, "onnx_threads": args.onnx_threads, "features": len(FEATURES),
        "results": results, "notes": notes,
    }, indent=2))
    console.print(f"wrote {out}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _ms(v: float) -> str:
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


if __name__ == "__main__":
    sys.exit(main())

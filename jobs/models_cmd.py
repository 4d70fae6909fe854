"""`streamscore models inspect|check|export`: look at, compare and convert model files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="inspect, cross-check and export model files",
                                   description="Inspect, cross-check and export ONNX / PMML / scikit-learn models.")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1])

    p = sub.add_parser("inspect", help="print a model's input schema, outputs and metadata")
    p.add_argument("model", help="model file (.onnx, .pmml, .skops; .joblib/.pkl with --trust-pickle)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _trust_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("check", help="vet a model on sample events: rows it rejects (with reasons) and, with "
                       "2-3 models, their agreement",
                       description="Validate and score a sample of events with each model: the rows each model "
                       "would reject and why, and (with two or three models, e.g. one model exported to ONNX, PMML "
                       "and skops) max/mean absolute score difference and label flips against the first model. "
                       "Exits 1 beyond tolerance or when no row can be scored.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="one to three model files; the first is the reference")
    p.add_argument("--sample", required=True, help="rows to score: .parquet, .csv or JSON lines (.jsonl/.json) "
                   "with the models' input columns")
    p.add_argument("--input-names", help="comma-separated input names for ONNX files that do not name theirs")
    p.add_argument("--tol", type=float, default=1e-6, help="max allowed absolute difference of scores and "
                   "probabilities (default 1e-6)")
    p.add_argument("--max-flips", type=int, default=0, help="label flips allowed per model (default 0)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _trust_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("export", help="convert a fitted scikit-learn model to ONNX, skops and PMML",
                       description="Convert a fitted scikit-learn estimator/pipeline (.skops, or .joblib/.pkl with "
                       "--trust-pickle --sha256) to ONNX (feature names in metadata), skops and, when the optional "
                       "sklearn2pmml extra and Java are installed, PMML. With --sample the exported files are "
                       "cross-checked like `models check`.")
    p.add_argument("model", help="fitted scikit-learn model file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="model name (default: the file's stem)")
    p.add_argument("--version", default="1", help="model version (default 1)")
    p.add_argument("--formats", default="onnx,skops,pmml",
                   help="comma-separated subset of onnx,skops,pmml (default all; pmml is skipped with a warning "
                   "when sklearn2pmml/Java are missing unless named alone)")
    p.add_argument("--feature-names", help="comma-separated input names when the estimator does not record them")
    p.add_argument("--allow-nan", default="auto", metavar="auto|none|COL,COL",
                   help="ONNX: inputs that may hold NaN (written as allow_nan metadata). auto (default): those "
                   "whose NaN the exported graph handles as scikit-learn does (an imputer first, or "
                   "HistGradientBoosting); none; or a comma-separated list")
    p.add_argument("--sample", help="cross-check the exported files on these rows (.parquet/.csv/.jsonl)")
    p.add_argument("--tol", type=float, default=1e-6)
    _trust_args(p)
    p.set_defaults(func=cmd_export)


def _trust_args(p) -> None:
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow .joblib/.pkl (pickle runs code on load); needs --sha256")
    p.add_argument("--sha256", help="sha256 of the pickle file you vetted")
    p.add_argument("--trusted-type", action="append", default=[], dest="trusted_types",
                   help="extra type a .skops file may instantiate (repeatable)")


def _load(path: str, args):
    from model_formats import load_model

    names = getattr(args, "input_names", None)
    return load_model(path, trust_pickle=args.trust_pickle, sha256=args.sha256,
                      trusted_types=args.trusted_types or None,
                      input_names=[n.strip() for n in names.split(",")] if names else None)


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)  # piped: wide enough for the tables


# --- inspect ----------------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    from model_formats import ModelLoadError

    try:
        model = _load(args.model, args)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        info = model.describe()
    finally:
        model.close()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{info['name']}[/bold] version {info['version']}  format={info['format']}  "
                  f"task={info['task']}")
    console.print(f"file: {info['path']}")
    if info["classes"]:
        console.print(f"classes: {info['classes']}")
    t = Table(title="inputs")
    for col in ("name", "type", "required", "NaN allowed", "missing to model", "domain"):
        t.add_column(col)
    for f in info["inputs"]:
        domain = ", ".join(map(str, f.get("allowed_values", []))) if "allowed_values" in f else ""
        t.add_row(f["name"], f["dtype"], "yes" if f["required"] else "no", "yes" if f["allow_nan"] else "no",
                  "yes" if f.get("nullable") else "no", domain[:80])
    console.print(t)
    t = Table(title="outputs")
    t.add_column("name")
    t.add_column("type")
    for f in info["outputs"]:
        t.add_row(f["name"], f["dtype"])
    console.print(t)
    if info["metadata"]:
        t = Table(title="metadata")
        t.add_column("key")
        t.add_column("value")
        for k, v in sorted(info["metadata"].items()):
            t.add_row(k, str(v)[:120])
        console.print(t)
    return 0


# --- check ------------------------------------------------------------------------------------

def read_sample(path: str, limit: int | None = None):
    """A .parquet, .csv or JSON-lines file as one Arrow RecordBatch."""
    import pyarrow as pa

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(p)
    elif suffix in (".csv", ".txt") or suffix == ".gz":
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(p)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        table = _read_json_lines(p)
    else:
        raise ValueError(f"{p.name}: sample must be .parquet, .csv or JSON lines (.jsonl)")
    if limit is not None:
        table = table.slice(0, limit)
    table = table.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def _read_json_lines(p: Path):
    """JSON lines as a table; a column whose values mix types (4 and "8") is kept as text, which
    validation reads back as numbers or categories as each model's schema says."""
    import pyarrow as pa
    import pyarrow.json as pjson

    try:
        return pjson.read_json(p)
    except pa.ArrowInvalid:
        pass
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{p.name}: every line must be a JSON object")
    names = list(dict.fromkeys(k for r in rows for k in r))
    columns = {}
    for n in names:
        values = [r.get(n) for r in rows]
        try:
            columns[n] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[n] = pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v)
                                   for v in values], type=pa.string())
    return pa.table(columns)


def compare_models(models, batch, tol: float = 1e-6, max_flips: int = 0) -> dict:
    """Score ``batch`` with every model; compare each to the first. Returns a JSON-able report."""
    import numpy as np

    from model_formats import LABEL, PROBABILITY_PREFIX, SCORE

    ref = models[0]
    report: dict = {"rows": batch.num_rows, "tolerance": tol, "max_flips": max_flips, "models": [], "comparisons": [],
                    "problems": []}
    results = []
    for m in models:
        r = m.validate(batch)
        results.append(r)
        report["models"].append({"name": m.name, "version": m.version, "format": m.format, "path": m.path,
                                 "rejected_rows": int(len(r.rejected_index)),
                                 "reject_reasons": _count(r.reasons),
                                 "rejected": [{"row": int(i), "reason": why}
                                              for i, why in list(zip(r.rejected_index, r.reasons))[:20]]})
    names = [set(m.schema.input_names) for m in models]
    if any(n != names[0] for n in names[1:]):
        report["problems"].append("input fields differ: " + " vs ".join(str(sorted(n)) for n in names))
    if any(tuple(map(str, m.classes)) != tuple(map(str, ref.classes)) for m in models[1:]):
        report["problems"].append("classes differ: " + " vs ".join(str(list(m.classes)) for m in models))
    if any(m.task != ref.task for m in models[1:]):
        report["problems"].append("tasks differ: " + " vs ".join(m.task for m in models))
    common = np.arange(batch.num_rows)
    for r in results:
        common = np.intersect1d(common, r.valid_index)
    report["scored_rows"] = int(len(common))
    if any(len(r.valid_index) != len(common) for r in results):
        report["problems"].append("the models accept different rows (see rejected_rows); only rows all accept are compared")
    if len(common) == 0:
        report["problems"].append("no row is valid for every model" if len(models) > 1
                                  else "the model rejects every row")
        report["ok"] = False
        return report
    outputs = []
    for m, r in zip(models, results):
        pos = np.searchsorted(r.valid_index, common)
        valid = r.valid.take(__import__("pyarrow").array(pos))
        outputs.append(m.predict(valid))
    ref_out = outputs[0]
    ref_score = ref_out.column(SCORE).to_numpy(zero_copy_only=False).astype(np.float64)
    ref_label = ref_out.column(LABEL).to_pylist()
    report["score_range"] = [float(np.nanmin(ref_score)), float(np.nanmax(ref_score))] \
        if np.isfinite(ref_score).any() else None
    if len(common) > 1 and np.nanstd(ref_score) == 0:
        report["problems"].append(f"{ref.name} ({ref.format}): every score is {ref_score[0]!r} — a degenerate model?")
    for m, out in zip(models[1:], outputs[1:]):
        score = out.column(SCORE).to_numpy(zero_copy_only=False).astype(np.float64)
        diffs = [np.abs(score - ref_score)]
        for name in ref_out.schema.names:
            if name.startswith(PROBABILITY_PREFIX) and name in out.schema.names:
                a = ref_out.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                b = out.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                diffs.append(np.abs(a - b))
        d = np.max(np.column_stack(diffs), axis=1)
        missing = int(np.isnan(d).sum())
        d_finite = np.where(np.isnan(d), np.inf, d)
        labels = out.column(LABEL).to_pylist()
        flips = sum(1 for a, b in zip(ref_label, labels) if not _same_label(a, b, m.task))
        comp = {
            "reference": f"{ref.name} ({ref.format})", "model": f"{m.name} ({m.format})",
            "max_abs_diff": float(np.max(d_finite)), "mean_abs_diff": float(np.mean(np.nan_to_num(d, nan=0.0))),
            "rows_beyond_tol": int((d_finite > tol).sum()), "label_flips": int(flips), "missing_scores": missing,
        }
        comp["ok"] = comp["max_abs_diff"] <= tol and flips <= max_flips and missing == 0
        if np.nanstd(score) == 0 and np.nanstd(ref_score) > 0:
            report["problems"].append(f"{m.name} ({m.format}): every score is {score[0]!r} — a broken export?")
            comp["ok"] = False
        report["comparisons"].append(comp)
    report["ok"] = all(c["ok"] for c in report["comparisons"]) and not [
        p for p in report["problems"] if not p.startswith("the models accept different rows")]
    return report


def _same_label(a, b, task: str) -> bool:
    if task == "regression":
        return True  # regressors are judged on the score alone
    if a is None or b is None:
        return False
    return str(a) == str(b)


def _count(reasons: list[str]) -> dict:
    out: dict[str, int] = {}
    for r in reasons:
        for part in r.split(";"):
            key = part.split("=", 1)[0]
            out[key] = out.get(key, 0) + 1
    return out


def _reasons_text(counts: dict) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def print_report(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    single = len(report["models"]) == 1
    title = (f"models check: {report['scored_rows']} of {report['rows']} rows scored"
             + ("" if single else " by every model") + f", tol {report['tolerance']:g}")
    t = Table(title=title)
    cols = ["model", "rejected rows", "why rejected"] + ([] if single else
                                                         ["max |diff|", "mean |diff|", "rows > tol", "label flips",
                                                          "verdict"])
    for col in cols:
        t.add_column(col)
    first = report["models"][0]
    ref_row = [f"{first['name']} ({first['format']})" + ("" if single else " [reference]"),
               str(first["rejected_rows"]), escape(_reasons_text(first["reject_reasons"]))]
    t.add_row(*ref_row, *([] if single else [""] * 5))
    for info, comp in zip(report["models"][1:], report["comparisons"]):
        t.add_row(comp["model"], str(info["rejected_rows"]), escape(_reasons_text(info["reject_reasons"])),
                  f"{comp['max_abs_diff']:.3g}", f"{comp['mean_abs_diff']:.3g}", str(comp["rows_beyond_tol"]),
                  str(comp["label_flips"]), "[green]agree[/green]" if comp["ok"] else "[red]DISAGREE[/red]")
    for info in report["models"][len(report["comparisons"]) + 1:]:  # no comparison ran (nothing scored)
        t.add_row(f"{info['name']} ({info['format']})", str(info["rejected_rows"]),
                  escape(_reasons_text(info["reject_reasons"])), "", "", "", "", "-")
    console.print(t)
    for info in report["models"]:
        if info.get("rejected"):
            shown = ", ".join(f"row {e['row']}: {e['reason']}" for e in info["rejected"][:5])
            more = info["rejected_rows"] - min(5, len(info["rejected"]))
            console.print(escape(f"  {info['name']} ({info['format']}) rejects {shown}"
                                 + (f" (+{more} more; --json lists 20)" if more > 0 else "")))
    if report.get("score_range") and single:
        lo, hi = report["score_range"]
        console.print(f"scores range {lo:.6g} .. {hi:.6g}")
    for p in report["problems"]:
        console.print(f"[yellow]! {escape(p)}[/yellow]")
    if report["ok"]:
        console.print("[green]OK[/green]")
    elif report["scored_rows"] == 0:
        console.print("[red]FAILED: no row could be scored (see why rows are rejected)[/red]")
    elif any(not c["ok"] for c in report["comparisons"]):
        console.print("[red]FAILED: the models disagree beyond tolerance[/red]")
    else:
        console.print("[red]FAILED: " + escape("; ".join(report["problems"])) + "[/red]")


def cmd_check(args) -> int:
    from model_formats import ModelLoadError

    if not 1 <= len(args.models) <= 3:
        print("error: give one to three models", file=sys.stderr)
        return 2
    models = []
    try:
        for path in args.models:
            models.append(_load(path, args))
        batch = read_sample(args.sample, args.limit)
        report = compare_models(models, batch, args.tol, args.max_flips)
    except (ModelLoadError, ValueError, OSError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for m in models:
            m.close()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


# --- export -----------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from model_formats import ModelLoadError
    from model_formats.export import PmmlExportError, export_onnx, export_pmml, export_skops, pmml_export_available
    from model_formats.sklearn_model import SklearnModel

    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    unknown = set(formats) - {"onnx", "skops", "pmml"}
    if unknown:
        print(f"error: unknown formats {sorted(unknown)}", file=sys.stderr)
        return 2
    try:
        source = _load(args.model, args)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(source, SklearnModel):
        print(f"error: export converts scikit-learn models; {args.model} is {source.format}", file=sys.stderr)
        source.close()
        return 2
    estimator = source.estimator
    names = args.feature_names.split(",") if args.feature_names else source.schema.input_names
    name = args.name or source.name
    out = Path(args.out)
    written: list[Path] = []
    console = _console()
    try:
        if "onnx" in formats:
            allow_nan = args.allow_nan if args.allow_nan in ("auto", "none") else \
                [c.strip() for c in args.allow_nan.split(",") if c.strip()]
            written.append(export_onnx(estimator, names, out / f"{name}.onnx", name=name, version=args.version,
                                       allow_nan=allow_nan))
        if "skops" in formats:
            written.append(export_skops(estimator, names, out / f"{name}.skops", name=name, version=args.version))
        if "pmml" in formats:
            ok, reason = pmml_export_available()
            if ok:
                written.append(export_pmml(estimator, names, out / f"{name}.pmml", name=name, version=args.version))
            elif formats == ["pmml"]:
                print(f"error: {reason}", file=sys.stderr)
                return 2
            else:
                from rich.markup import escape   # the reason names the extra in [brackets]
                console.print(f"[yellow]skipping PMML: {escape(reason)}[/yellow]")
    except (PmmlExportError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # skl2onnx: unsupported estimator
        print(f"error: conversion failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    for w in written:
        console.print(f"wrote {w}")
    if args.sample and len(written) >= 1:
        from model_formats import load_model

        models = [source] + [load_model(w) for w in written if w.suffix != ".skops"]
        try:
            report = compare_models(models, read_sample(args.sample), args.tol, 0)
        finally:
            for m in models:
                m.close()
        print_report(report)
        return 0 if report["ok"] else 1
    source.close()
    return 0

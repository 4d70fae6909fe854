"""A large model through `model_formats`: a random forest of 250 trees × ~100,000 nodes per tree
(max_leaf_nodes 50,000), the size one reference deployment serves. Load time, memory per worker
(RSS, PSS), rows/s at batch 1 / 64 / 1024 in ONNX (onnxruntime), scikit-learn (trusted pickle) and
PMML (pypmml), and the memory of two worker processes on one host.

    .venv/bin/python bench/large_model.py [--trees 250] [--leaves 50000] [--pmml-trees 5] [--max-rss-gib 8]

Stages, each in a process of its own under a memory guard (the whole process tree's RSS, JVMs
included, is sampled every 0.2 s; above --max-rss-gib the stage is killed and reported as such):
  train        fit on synthetic noisy data (--rows; noise keeps the trees growing to max_leaf_nodes),
               pickle to bench/.cache (gitignored; reused while the parameters match)
  export-onnx  the first --onnx-trees trees as one TreeEnsembleClassifier, built with numpy from
               the fitted trees' arrays (skl2onnx converts node by node into Python lists: ~8 GB and
               minutes at this size); the graph, its metadata and the attribute layout are skl2onnx's,
               taken from `model_formats.export.export_onnx` of a one-tree forest; checked against
               scikit-learn on 2,000 rows (max |difference| in the JSON). Not the whole forest:
               onnxruntime 1.32 peaks at ~430 bytes per node while it builds the TreeEnsemble kernel
               (~11 GB for 25M nodes; ~390 after loading, ~160 once malloc_trim hands the freed heap
               back), above the guard; its figures are scaled to the whole forest.
  export-pmml  the first --pmml-trees trees as a PMML MiningModel (average of TreeModels), written
               directly. The whole forest cannot be a PMML model here: PmmlModel hands the document to
               PMML4S as one Java String (at most 2^31-1 characters; the full forest is ~3-4 GB of XML)
               after parsing it into a Python ElementTree. Its per-tree figures are scaled to 250.
  measure      per format: load_model() time, RSS/PSS after load (the PMML JVM counted in), the
               peak RSS while loading, rows/s and p50 per call at each batch size
  two-workers  per format: two processes each loading the model (as two Flink Python workers do;
               the second starts once the first has loaded), their PSS and the host's total; and,
               for ONNX and scikit-learn, one process that loads and forks two scorers (copy-on-write:
               what one copy per host would take)
Prints a table, writes bench/results/large_model.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.formats import FEATURES, batch_of, make_data, time_calls  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
GIB = 1024 ** 3


# -- memory ------------------------------------------------------------------------------------

def tree_memory(pid: int) -> dict:
    """RSS, PSS and USS in bytes of a process and its descendants (a PMML JVM, forked scorers)."""
    import psutil

    total = {"rss": 0, "pss": 0, "uss": 0, "processes": 0}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total["rss"] += info.rss
        total["pss"] += getattr(info, "pss", 0)
        total["uss"] += getattr(info, "uss", 0)
        total["processes"] += 1
    return total


class MemoryGuard:
    """Samples the summed PSS (RSS where PSS cannot be read) of some processes and their
    descendants; kills them all when it goes above ``limit`` bytes. ``procs`` may grow after the guard starts (a second worker)."""

    def __init__(self, procs: list[subprocess.Popen], limit: int) -> None:
        self.procs, self.limit = procs, limit
        self.peak_rss = 0
        self.exceeded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list:
        import psutil

        found = []
        for proc in list(self.procs):
            if proc.poll() is not None:
                continue
            try:
                root = psutil.Process(proc.pid)
                found += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return found

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            procs, rss = self._tree(), 0
            for p in procs:      # PSS: pages shared after a fork count once, not once per process
                try:
                    rss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            self.peak_rss = max(self.peak_rss, rss)
            if rss > self.limit:
                self.exceeded = True
                for p in reversed(procs):
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def run_stage(args: list[str], limit: int, timeout_s: float = 3600) -> dict:
    """Run ``large_model.py --stage ...`` in a new process under a MemoryGuard; its JSON result
    (the last stdout line), with the guard's peak RSS and whether it was killed."""
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    guard = MemoryGuard([proc], limit)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return {"error": f"timed out after {timeout_s:.0f} s", "peak_rss_gib": round(guard.peak_rss / GIB, 2)}
    finally:
        guard.stop()
    result: dict = {}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
    if guard.exceeded:
        result["error"] = f"killed: the process tree's RSS went above {limit / GIB:.1f} GiB"
    elif proc.returncode and "error" not in result:
        result["error"] = f"exit status {proc.returncode}"
    result["guard_peak_rss_gib"] = round(guard.peak_rss / GIB, 2)
    return result


# -- the forest --------------------------------------------------------------------------------

def forest_path(trees: int, leaves: int, rows: int) -> Path:
    return CACHE / f"rf-{trees}x{leaves}-{rows}.pkl"


def training_data(rows: int):
    """The formats bench's synthetic rows with 45 % of the labels flipped: the trees keep
    splitting until they reach max_leaf_nodes (about 2 × leaves - 1 nodes each)."""
    X, y = make_data(rows, 1)
    flip = np.random.default_rng(3).random(len(y)) < 0.45
    return X, np.where(flip, 1 - y, y)


def stage_train(trees: int, leaves: int, rows: int, jobs: int) -> dict:
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    X, y = training_data(rows)
    t0 = time.perf_counter()
    forest = RandomForestClassifier(n_estimators=trees, max_leaf_nodes=leaves, random_state=0, n_jobs=jobs)
    forest.fit(pd.DataFrame(X, columns=FEATURES), y)
    fit_s = time.perf_counter() - t0
    forest.n_jobs = None       # scoring: one thread, like one Flink slot
    path = forest_path(trees, leaves, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(forest, f, protocol=5)
    tmp.rename(path)
    return {"fit_s": round(fit_s, 1), **forest_stats(forest), "pickle_bytes": path.stat().st_size}


def forest_stats(forest) -> dict:
    nodes = [e.tree_.node_count for e in forest.estimators_]
    state_bytes = sum(e.tree_.__getstate__()["nodes"].nbytes + e.tree_.value.nbytes for e in forest.estimators_)
    return {"trees": len(nodes), "nodes_total": int(sum(nodes)), "nodes_per_tree_mean": round(float(np.mean(nodes))),
            "max_depth_mean": round(float(np.mean([e.tree_.max_depth for e in forest.estimators_])), 1),
            "sklearn_tree_arrays_bytes": int(state_bytes)}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_forest(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)   # our own cache file, written by stage_train


# -- ONNX: skl2onnx's layout, built with numpy -------------------------------------------------

def stage_export_onnx(forest_file: Path, out: Path, trees: int) -> dict:
    import onnx
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    from model_formats.export import export_onnx

    t0 = time.perf_counter()
    forest = _load_forest(forest_file)
    estimators = forest.estimators_[:trees]
    n_trees = len(estimators)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tree", "feature", "threshold", "left", "right", "leaf", "w")}
    for tree_id, est in enumerate(estimators):
        t = est.tree_
        leaf = t.children_left == -1
        value = t.value[:, 0, :]
        parts["tree"].append(np.full(t.node_count, tree_id, dtype=np.int32))
        parts["feature"].append(np.where(leaf, 0, t.feature).astype(np.int32))
        parts["threshold"].append(np.where(leaf, 0.0, t.threshold).astype(np.float32))
        parts["left"].append(np.where(leaf, 0, t.children_left).astype(np.int32))
        parts["right"].append(np.where(leaf, 0, t.children_right).astype(np.int32))
        parts["leaf"].append(leaf)
        parts["w"].append((value[:, 1] / np.maximum(value.sum(axis=1), 1e-300) / n_trees).astype(np.float32))
    X_check, _ = make_data(2000, 7)
    # scikit-learn's answer for these trees: the mean of their probabilities (the forest's predict_proba)
    expected = np.mean([est.predict_proba(X_check.astype(np.float32))[:, 1] for est in estimators], axis=0)
    del forest, estimators
    a = {k: np.concatenate(v) for k, v in parts.items()}
    del parts
    node_ids = np.concatenate([np.arange(n, dtype=np.int32) for n in np.bincount(a["tree"])])

    # the template: the project's exporter on a one-tree forest (graph, outputs, metadata)
    X_small, y_small = make_data(200, 1)
    small = RandomForestClassifier(n_estimators=1, max_leaf_nodes=4, random_state=0).fit(
        pd.DataFrame(X_small, columns=FEATURES), y_small)
    with tempfile.TemporaryDirectory() as tmp:
        proto = onnx.load(str(export_onnx(small, FEATURES, Path(tmp) / "template.onnx", name="large-forest")))
    node = next(n for n in proto.graph.node if n.op_type == "TreeEnsembleClassifier")
    keep = {attr.name: attr for attr in node.attribute if attr.name in ("classlabels_int64s", "post_transform")}
    class_id = next(attr.ints[0] for attr in node.attribute if attr.name == "class_ids")
    del node.attribute[:]
    leaves = a["leaf"]

    def ints(name: str, values: np.ndarray) -> None:
        attr = node.attribute.add()
        attr.name, attr.type = name, onnx.AttributeProto.INTS
        attr.ints.extend(values.tolist())

    def floats(name: str, values: np.ndarray) -> None:
        attr = node.attribute.add()
        attr.name, attr.type = name, onnx.AttributeProto.FLOATS
        attr.floats.extend(values.tolist())

    for name in ("classlabels_int64s", "post_transform"):
        node.attribute.add().CopyFrom(keep[name])
    ints("class_ids", np.full(int(leaves.sum()), class_id, dtype=np.int64))
    ints("class_nodeids", node_ids[leaves])
    ints("class_treeids", a["tree"][leaves])
    floats("class_weights", a["w"][leaves])
    ints("nodes_falsenodeids", a["right"])
    ints("nodes_featureids", a["feature"])
    modes = node.attribute.add()
    modes.name, modes.type = "nodes_modes", onnx.AttributeProto.STRINGS
    names = (b"BRANCH_LEQ", b"LEAF")
    modes.strings.extend([names[x] for x in leaves.view(np.uint8).tolist()])
    ints("nodes_nodeids", node_ids)
    ints("nodes_treeids", a["tree"])
    ints("nodes_truenodeids", a["left"])
    floats("nodes_values", a["threshold"])
    del a, node_ids, leaves
    onnx.save(proto, str(out))
    build_s = time.perf_counter() - t0
    del proto

    from model_formats import load_model   # the check: the project's loader, onnxruntime

    model = load_model(out)
    got = model.predict(model.validate(batch_of(X_check)).valid)
    scores = got.column("score").to_numpy(zero_copy_only=False)
    model.close()
    return {"build_s": round(build_s, 1), "bytes": out.stat().st_size, "trees": n_trees,
            "max_abs_diff_vs_sklearn": float(np.max(np.abs(scores - expected)))}


# -- PMML: a MiningModel averaging TreeModels, written directly --------------------------------

def stage_export_pmml(forest_file: Path, out: Path, trees: int) -> dict:
    t0 = time.perf_counter()
    forest = _load_forest(forest_file)
    estimators = forest.estimators_[:trees]
    fields = "".join(f'<DataField name="{f}" optype="continuous" dataType="double"/>' for f in FEATURES)
    mining = "".join(f'<MiningField name="{f}"/>' for f in FEATURES)
    with open(out, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4">'
                '<Header><Extension name="streamscore.name" value="large-forest"/>'
                '<Extension name="streamscore.version" value="1"/></Header>'
                '<DataDictionary><DataField name="y" optype="categorical" dataType="integer"><Value value="0"/>'
                f'<Value value="1"/></DataField>{fields}</DataDictionary>'
                '<MiningModel functionName="classification"><MiningSchema><MiningField name="y" usageType="target"/>'
                f'{mining}</MiningSchema><Output>'
                '<OutputField name="probability(0)" optype="continuous" dataType="double" feature="probability" value="0"/>'
                '<OutputField name="probability(1)" optype="continuous" dataType="double" feature="probability" value="1"/>'
                '</Output><Segmentation multipleModelMethod="average">')
        for i, est in enumerate(estimators, 1):
            f.write(f'<Segment id="{i}"><True/><TreeModel functionName="classification" '
                    f'missingValueStrategy="nullPrediction"><MiningSchema>{mining}</MiningSchema>')
            _write_tree(f, est.tree_)
            f.write("</TreeModel></Segment>")
        f.write("</Segmentation></MiningModel></PMML>\n")
    X_check, _ = make_data(500, 7)
    # what scikit-learn's forest of these trees answers: the mean of the trees' probabilities
    expected = np.mean([est.predict_proba(X_check.astype(np.float32))[:, 1] for est in estimators], axis=0)
    n_trees = len(estimators)
    del forest, estimators
    build_s = time.perf_counter() - t0
    from model_formats import load_model

    model = load_model(out)
    try:
        got = model.predict(model.validate(batch_of(X_check)).valid)
        scores = got.column("score").to_numpy(zero_copy_only=False)
    finally:
        model.close()
    return {"build_s": round(build_s, 1), "bytes": out.stat().st_size, "trees": n_trees,
            "max_abs_diff_vs_sklearn": float(np.max(np.abs(scores - expected)))}


def _write_tree(f, t) -> None:
    """One tree as nested Nodes: the left child carries ``x <= threshold``, the right ``True``
    (PMML takes the first child whose predicate holds). Leaves carry the class fractions."""
    left, right, feature, threshold = t.children_left, t.children_right, t.feature, t.threshold
    value = t.value[:, 0, :]
    fractions = value / np.maximum(value.sum(axis=1, keepdims=True), 1e-300)
    names = FEATURES
    out: list[str] = []
    # (node, predicate) on a stack; None closes a Node
    stack: list = [(0, "<True/>")]
    while stack:
        item = stack.pop()
        if item is None:
            out.append("</Node>")
            continue
        node, predicate = item
        if left[node] == -1:
            p0, p1 = fractions[node]
            out.append(f'<Node score="{int(p1 > p0)}">{predicate}'
                       f'<ScoreDistribution value="0" recordCount="{p0!r}"/>'
                       f'<ScoreDistribution value="1" recordCount="{p1!r}"/></Node>')
            continue
        out.append(f"<Node>{predicate}")
        stack.append(None)
        stack.append((int(right[node]), "<True/>"))
        stack.append((int(left[node]), f'<SimplePredicate field="{names[feature[node]]}" operator="lessOrEqual" '
                                       f'value="{float(threshold[node])!r}"/>'))
        if len(out) > 100_000:
            f.write("".join(out))
            out.clear()
    f.write("".join(out))


# -- measuring ---------------------------------------------------------------------------------

def _load(fmt: str, path: Path, digest: str | None):
    from model_formats import load_model

    if fmt == "sklearn":
        return load_model(path, trust_pickle=True, sha256=digest)
    return load_model(path)


def _jvm_pid() -> int | None:
    from model_formats.pmml_model import PmmlRuntime

    return PmmlRuntime.pid()


def _own_memory() -> dict:
    mem = tree_memory(os.getpid())
    return {k: round(v / GIB, 3) if k != "processes" else v for k, v in mem.items()}


def stage_measure(fmt: str, path: Path, digest: str | None, sizes: list[int], min_time: float) -> dict:
    import resource

    before = _own_memory()
    t0 = time.perf_counter()
    model = _load(fmt, path, digest)
    load_s = time.perf_counter() - t0
    after = _own_memory()
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    X, _ = make_data(max(sizes), 2)
    cells = []
    try:
        model.predict(model.validate(batch_of(X[:1])).valid)
        for bs in sizes:
            valid = model.validate(batch_of(X[:bs])).valid
            model.predict(valid)
            times = time_calls(lambda: model.predict(valid), min_time, 10_000)
            cells.append({"batch": bs, "calls": len(times), "p50_ms": round(float(np.median(times)) * 1e3, 3),
                          "rows_per_s": round(bs / float(np.mean(times)), 1)})
            print(f"  {fmt} batch {bs}: {cells[-1]}", file=sys.stderr, flush=True)
        scored = _own_memory()
        import ctypes      # what the heap keeps of the load's freed temporaries (glibc returns it on request)

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = _own_memory()
    finally:
        model.close()
    return {"format": fmt, "load_s": round(load_s, 2), "memory_before_gib": before, "memory_loaded_gib": after,
            "memory_after_scoring_gib": scored, "memory_after_malloc_trim_gib": trimmed,
            "peak_rss_python_gib": round(peak_self, 3), "cells": cells}


def stage_hold(fmt: str, path: Path, digest: str | None, fork: int) -> None:
    """Load, score a batch, print the memory and wait for stdin to close. ``fork`` > 0: load once,
    then fork that many scorers that each score and wait (copy-on-write sharing)."""
    model = _load(fmt, path, digest)
    X, _ = make_data(1024, 2)
    valid = model.validate(batch_of(X)).valid
    model.predict(valid)
    children = []
    for _ in range(fork):
        pid = os.fork()
        if pid == 0:
            for _ in range(5):
                model.predict(valid)
            sys.stdin.read()
            os._exit(0)
        children.append(pid)
    time.sleep(1.0)
    print(json.dumps({"pid": os.getpid(), "children": children}), flush=True)
    sys.stdin.read()
    for pid in children:
        os.waitpid(pid, 0)
    model.close()


def two_workers(fmt: str, path: Path, digest: str | None, limit: int, fork: bool) -> dict:
    """Two processes with the model loaded (independently, or forked from one loader): PSS each
    and the host's total, while both hold it."""
    import psutil

    cmd = [sys.executable, __file__, "--stage", "hold", "--format", fmt, "--path", str(path)]
    if digest:
        cmd += ["--sha256", digest]
    procs: list[subprocess.Popen] = []
    guard, started = MemoryGuard(procs, limit), time.perf_counter()     # one limit for all of them
    try:
        for _ in range(1 if fork else 2):
            proc = subprocess.Popen(cmd + (["--fork", "2"] if fork else []), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, cwd=ROOT)
            procs.append(proc)
            line = proc.stdout.readline()      # loaded (the next one loads after: no two load peaks at once)
            if not line:
                return {"error": f"killed: the workers' RSS went above {limit / GIB:.1f} GiB" if guard.exceeded
                        else f"exit status {proc.wait()}", "guard_peak_rss_gib": round(guard.peak_rss / GIB, 2),
                        "workers_started": len(procs)}
        time.sleep(1.0)
        per_process = []
        for proc in procs:
            root = psutil.Process(proc.pid)
            for p in [root, *root.children(recursive=True)]:
                info = p.memory_full_info()
                per_process.append({"pid": p.pid, "name": p.name(), "rss_gib": round(info.rss / GIB, 3),
                                    "pss_gib": round(info.pss / GIB, 3), "uss_gib": round(info.uss / GIB, 3)})
        return {"mode": "fork after load (copy-on-write)" if fork else "two independent loads",
                "processes": per_process, "total_pss_gib": round(sum(p["pss_gib"] for p in per_process), 3),
                "total_rss_gib": round(sum(p["rss_gib"] for p in per_process), 3),
                "guard_peak_rss_gib": round(guard.peak_rss / GIB, 2), "seconds": round(time.perf_counter() - started, 1)}
    finally:
        for proc in procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        guard.stop()


# -- main --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", type=int, default=250)
    ap.add_argument("--leaves", type=int, default=50_000, help="max_leaf_nodes: about 2 × leaves - 1 nodes per tree")
    ap.add_argument("--rows", type=int, default=250_000, help="training rows (enough for the trees to reach --leaves)")
    ap.add_argument("--train-jobs", type=int, default=2)
    ap.add_argument("--pmml-trees", type=int, default=5, help="trees in the PMML model (figures scaled to --trees)")
    ap.add_argument("--onnx-trees", type=int, default=50,
                    help="trees in the ONNX model (figures scaled to --trees): onnxruntime's TreeEnsemble "
                         "takes ~430 bytes per node while loading (~11 GB for 25M nodes), above the guard")
    ap.add_argument("--formats", default="onnx,sklearn,pmml")
    ap.add_argument("--batch-sizes", default="1,64,1024")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per batch size")
    ap.add_argument("--max-rss-gib", type=float, default=8.0, help="kill a stage whose process tree's RSS goes above")
    ap.add_argument("--skip-two-workers", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "large_model.json"))
    # internal: one stage in this process
    ap.add_argument("--stage", choices=["train", "export-onnx", "export-pmml", "measure", "hold"])
    ap.add_argument("--format")
    ap.add_argument("--path")
    ap.add_argument("--sha256")
    ap.add_argument("--fork", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    forest_file = forest_path(args.trees, args.leaves, args.rows)
    onnx_file = forest_file.with_name(f"{forest_file.stem}-first{args.onnx_trees}.onnx")
    pmml_file = forest_file.with_name(f"{forest_file.stem}-first{args.pmml_trees}.pmml")

    if args.stage == "train":
        print(json.dumps(stage_train(args.trees, args.leaves, args.rows, args.train_jobs)))
        return 0
    if args.stage == "export-onnx":
        print(json.dumps(stage_export_onnx(forest_file, onnx_file, args.onnx_trees)))
        return 0
    if args.stage == "export-pmml":
        print(json.dumps(stage_export_pmml(forest_file, pmml_file, args.pmml_trees)))
        return 0
    if args.stage == "measure":
        print(json.dumps(stage_measure(args.format, Path(args.path), args.sha256, sizes, args.min_time)))
        return 0
    if args.stage == "hold":
        stage_hold(args.format, Path(args.path), args.sha256, args.fork)
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    limit = int(args.max_rss_gib * GIB)
    formats = [f.strip() for f in args.formats.split(",")]
    report: dict = {"what": __doc__.split("\n\n")[0], "settings": vars(args),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "load_1m_start": round(os.getloadavg()[0], 2)}, "stages": {}}
    stages = report["stages"]
    if forest_file.exists():
        console.print(f"forest cached: {forest_file}")
        stages["train"] = {"cached": str(forest_file)}
    else:
        console.print(f"training {args.trees} trees × ≤{args.leaves:,} leaves on {args.rows:,} rows…")
        stages["train"] = run_stage(["--stage", "train", *_common(args)], limit)
        console.print(stages["train"])
        if "error" in stages["train"]:
            return _finish(report, args, console)
    files = {}
    exports = {"onnx": (onnx_file, args.onnx_trees, "building the ONNX model"),      # subsets of the forest
               "pmml": (pmml_file, args.pmml_trees, "writing the PMML model")}
    for fmt in ("onnx", "sklearn", "pmml"):
        if fmt not in formats:
            continue
        if fmt == "sklearn":
            files[fmt] = (forest_file, sha256(forest_file), 1.0)
            continue
        path, trees, what = exports[fmt]
        if not path.exists() or path.stat().st_mtime < forest_file.stat().st_mtime:
            console.print(f"{what} (first {trees} trees)…")
            stages[f"export-{fmt}"] = run_stage(["--stage", f"export-{fmt}", *_common(args)], limit)
            console.print(stages[f"export-{fmt}"])
        if path.exists():
            files[fmt] = (path, None, args.trees / min(trees, args.trees))
    report["files"] = {fmt: {"path": str(p), "bytes": p.stat().st_size, "scaled_by": scale}
                       for fmt, (p, _, scale) in files.items()}
    results = report["results"] = {}
    for fmt, (path, digest, scale) in files.items():      # one worker each first, then the pairs
        console.print(f"[bold]{fmt}[/]: load and score ({path.name})…")
        load = os.getloadavg()[0]
        measured = run_stage(["--stage", "measure", "--format", fmt, "--path", str(path),
                              *(["--sha256", digest] if digest else []), "--batch-sizes", args.batch_sizes,
                              "--min-time", str(args.min_time), *_common(args)], limit)
        measured["load_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        measured["scaled_by"] = scale
        results[fmt] = {"measure": measured}
        console.print(measured)
        _finish(report, args, console)           # partial results survive an interrupted run
    for fmt, (path, digest, scale) in files.items():
        if args.skip_two_workers or "error" in results[fmt]["measure"]:
            continue
        console.print(f"[bold]{fmt}[/]: two workers…")
        results[fmt]["two_workers"] = two_workers(fmt, path, digest, limit, fork=False)
        console.print(results[fmt]["two_workers"])
        if fmt in ("onnx", "sklearn"):
            results[fmt]["fork_shared"] = two_workers(fmt, path, digest, limit, fork=True)
            console.print(results[fmt]["fork_shared"])
        _finish(report, args, console)
    _print_table(report, console)
    return _finish(report, args, console)


def _common(args) -> list[str]:
    return ["--trees", str(args.trees), "--leaves", str(args.leaves), "--rows", str(args.rows),
            "--train-jobs", str(args.train_jobs), "--pmml-trees", str(args.pmml_trees),
            "--onnx-trees", str(args.onnx_trees)]


def _print_table(report: dict, console) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(width=200)
    sizes = [int(s) for s in report["settings"]["batch_sizes"].split(",")]
    table = Table(title=f"random forest {report['settings']['trees']} trees × ~{2 * report['settings']['leaves']:,} "
                        f"nodes: one worker (ONNX: {report['settings']['onnx_trees']}, PMML: "
                        f"{report['settings']['pmml_trees']} trees measured, ×N scaled)")
    for col in ("format", "file GB", "load s", "RSS GiB", "PSS GiB", "peak RSS GiB", *[f"rows/s @{b}" for b in sizes],
                "2 workers PSS GiB", "forked ×2 PSS GiB"):
        table.add_column(col, justify="left" if col == "format" else "right")
    for fmt, r in report.get("results", {}).items():
        m = r["measure"]
        if "error" in m:
            table.add_row(fmt, *["-"] * (7 + len(sizes) - 1), m["error"])
            continue
        scale = m.get("scaled_by", 1.0)
        mark = f" (×{scale:g})" if scale != 1 else ""
        loaded, base = m["memory_after_scoring_gib"], m["memory_before_gib"]
        cells = {c["batch"]: c["rows_per_s"] for c in m["cells"]}
        table.add_row(fmt + mark, f"{report['files'][fmt]['bytes'] / 1e9:.2f}", f"{m['load_s']:.1f}",
                      f"{loaded['rss']:.2f}", f"{loaded['pss']:.2f}", f"{m['guard_peak_rss_gib']:.2f}",
                      *[f"{cells.get(b, float('nan')):,.0f}" for b in sizes],
                      str(r.get("two_workers", {}).get("total_pss_gib", "-")),
                      str(r.get("fork_shared", {}).get("total_pss_gib", "-")))
    out.print(table)
    out.print("memory: the worker process (and its PMML JVM) after loading and scoring; 'before' (interpreter and "
              "imports) and after malloc_trim are in the JSON. Rows marked ×N: measured on the first trees only; "
              "multiply memory and load time, divide rows/s by N for the whole forest (an estimate).")


def _finish(report: dict, args, console) -> int:
    report["machine"]["load_1m_end"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

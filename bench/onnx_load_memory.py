"""What loading a tree-ensemble ONNX model costs in memory: resident memory a load adds and the
process's peak, each load in a fresh interpreter (onnxruntime imported first, so its own import is
not counted). The forest (a scikit-learn random forest exported with ``model_formats.export``) is
built once and cached under ``--workdir``.

    python bench/onnx_load_memory.py [--trees 30] [--leaves 15000] [--repeat 2]
    python bench/onnx_load_memory.py --code /path/to/another/checkout    # the same load with other code

Writes ``bench/results/onnx_load_memory.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOAD = """
import sys
sys.path.insert(0, sys.argv[1])
import onnxruntime  # noqa: F401 - its import is not the model's cost
from model_formats import load_model

def status_mib(field):     # VmHWM (the peak) starts afresh at exec, unlike getrusage's maxrss
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

before = status_mib("VmRSS")
load_model(sys.argv[2])
print(before, status_mib("VmRSS"), status_mib("VmHWM"))
"""


def build_forest(path: Path, trees: int, leaves: int) -> dict:
    """A random forest on noisy data (so its trees grow to ``leaves``), exported to ``path``."""
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    sys.path.insert(0, str(ROOT))
    from model_formats.export import export_onnx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * leaves, 8)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=len(x)) > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=trees, max_leaf_nodes=leaves, random_state=0).fit(x, y)
    export_onnx(forest, [f"f{i}" for i in range(8)], path, name="forest")
    return {"trees": trees, "nodes": int(sum(t.tree_.node_count for t in forest.estimators_))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", type=int, default=30)
    parser.add_argument("--leaves", type=int, default=15000, help="max leaf nodes per tree")
    parser.add_argument("--repeat", type=int, default=2, help="loads, each in a fresh interpreter")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose model_formats loads the model")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "streamscore" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "onnx_load_memory.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / f"forest-{args.trees}x{args.leaves}.onnx"
    facts_file = model.with_suffix(".json")
    if not model.exists():
        print(f"building {model.name} (once)…", file=sys.stderr)
        facts_file.write_text(json.dumps(build_forest(model, args.trees, args.leaves)))
    facts = json.loads(facts_file.read_text())
    loads = []
    for _ in range(args.repeat):
        out = subprocess.run([sys.executable, "-c", LOAD, str(args.code), str(model)], check=True,
                             capture_output=True, text=True).stdout.split()
        before, after, peak = (float(v) for v in out[-3:])
        loads.append({"added_mib": round(after - before, 1), "peak_mib": round(peak, 1)})
        print(f"load added {after - before:.0f} MiB resident, process peak {peak:.0f} MiB")
    report = {"benchmark": "onnx_load_memory", "model": {**facts, "file_mb": round(model.stat().st_size / 1e6, 1)},
              "code": str(args.code), "loads": loads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

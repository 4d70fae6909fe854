"""Shared fixtures for the model_formats tests: small synthetic data and models trained on it.

Nothing is downloaded: every model is trained on data generated with a fixed seed (the recipe is
`make_data`, `train_models` and `categorical_data` / `train_categorical` below). The inputs are
float32-representable doubles so that every runtime (float32 ONNX trees, float64 scikit-learn,
JSON-fed PMML) sees exactly the same numbers.

Two sets of model files:

- exported in-test (``onnx_files``, ``skops_files``) from models fitted in-test: they test the
  exporters;
- committed (``committed_files``, under tests/fixtures/models/): each model of the recipe fitted
  ONCE and written to ONNX, skops and PMML from that one fit, by
  tests/fixtures/regenerate_pmml.py in a venv that has sklearn2pmml (which cannot be installed
  next to apache-beam, so it is not in the ``test`` extra). The cross-format agreement tests
  compare these three, so PMML is tested wherever pypmml and Java are, without sklearn2pmml.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

FEATURES = ["amount", "age_days", "velocity", "ratio"]
N_TRAIN = 3000
N_SCORE = 10_000
MODELS = ["logreg", "forest", "gbm", "hgb_multi"]
CATEGORICAL = "cat"
FORMATS = ("skops", "onnx", "pmml")
MODEL_VERSION = "7"
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "models"
MANIFEST = FIXTURE_DIR / "manifest.json"


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32).astype(np.float64)
    logit = 1.5 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] * X[:, 3]
    y_bin = (logit + rng.normal(scale=0.5, size=n) > 0).astype(np.int64)
    y_multi = np.digitize(logit, [-1.0, 1.0]).astype(np.int64)  # 3 classes
    return X, y_bin, y_multi


def as_batch(X: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(X[:, j]) for j in range(X.shape[1])], names=FEATURES)


def train_models() -> dict:
    """name -> fitted estimator (fitted on a DataFrame so feature_names_in_ is set)."""
    import pandas as pd
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y_bin, y_multi = make_data(N_TRAIN, seed=1)
    df = pd.DataFrame(X, columns=FEATURES)
    models = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(df, y_bin),
        "forest": RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0, n_jobs=1).fit(df, y_bin),
        "gbm": GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(df, y_bin),
        "hgb_multi": HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(df, y_multi),
    }
    return models


# Expensive artifacts are built once per process (several test modules use them), in one
# temporary folder removed at exit.

@functools.cache
def artifact_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="streamscore-model-formats-"))
    atexit.register(shutil.rmtree, d, True)
    return d


@functools.cache
def cached_models() -> dict:
    return train_models()


@functools.cache
def cached_onnx() -> dict:
    from model_formats.export import export_onnx

    return {name: export_onnx(est, FEATURES, artifact_dir() / f"{name}.onnx", name=name, version="7")
            for name, est in cached_models().items()}


@functools.cache
def cached_skops() -> dict:
    from model_formats.export import export_skops

    return {name: export_skops(est, FEATURES, artifact_dir() / f"{name}.skops", name=name, version="7")
            for name, est in cached_models().items()}


def pmml_skip_reason() -> str | None:
    """Why PMML models cannot be *scored* here (pypmml or Java missing), or None."""
    try:
        import pypmml  # noqa: F401
    except ImportError as exc:
        return f"pypmml is not installed ({exc})"
    from model_formats.pmml_model import find_java

    if not find_java():
        return "PMML scoring needs a Java runtime (java on PATH or JAVA_HOME)"
    return None


@pytest.fixture(scope="session")
def trained_models() -> dict:
    return cached_models()


@pytest.fixture(scope="session")
def score_data() -> np.ndarray:
    X, _, _ = make_data(N_SCORE, seed=2)
    return X


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return artifact_dir()


@pytest.fixture(scope="session")
def onnx_files() -> dict:
    return cached_onnx()


@pytest.fixture(scope="session")
def skops_files() -> dict:
    return cached_skops()


@pytest.fixture(scope="session")
def pmml_jvm():
    """Hold the PMML JVM for the whole session: started once, stopped at the end."""
    reason = pmml_skip_reason()
    if reason:
        pytest.skip(f"PMML tests need pypmml and Java: {reason}")
    from model_formats.pmml_model import PmmlRuntime

    PmmlRuntime.acquire()
    yield PmmlRuntime
    PmmlRuntime.release()


@pytest.fixture(scope="session")
def committed() -> dict[str, dict[str, Path]]:
    """The committed models: name -> {"skops"|"onnx"|"pmml": path}, all three from one fit."""
    return committed_files()


@pytest.fixture(scope="session")
def pmml_files(pmml_jvm, committed) -> dict[str, Path]:
    """The committed PMML files (JVM held for the session)."""
    return {name: files["pmml"] for name, files in committed.items()}


def categorical_data():
    """Frame with a string categorical column, and its binary target (seed 3)."""
    import pandas as pd

    rng = np.random.default_rng(3)
    n = 1500
    df = pd.DataFrame({
        "amount": rng.normal(size=n).astype(np.float32).astype(np.float64),
        "channel": rng.choice(["web", "pos", "atm"], n),
        "age_days": rng.normal(size=n).astype(np.float32).astype(np.float64),
    })
    y = ((df.amount > 0) ^ (df.channel == "atm")).astype(np.int64)
    return df, y


def train_categorical():
    """A pipeline with a string categorical column (ColumnTransformer + OneHotEncoder)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df, y = categorical_data()
    pipe = Pipeline([
        ("ct", ColumnTransformer([("num", StandardScaler(), ["amount", "age_days"]),
                                  ("cat", OneHotEncoder(handle_unknown="error"), ["channel"])])),
        ("clf", LogisticRegression(max_iter=500)),
    ]).fit(df, y)
    return pipe, df


# --- committed model files (one fit -> ONNX, skops, PMML) -----------------------------------------

def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def committed_files() -> dict[str, dict[str, Path]]:
    """name -> {format: path} of the committed models (MODELS and CATEGORICAL), checked against
    the sha256 digests in the manifest the regeneration script wrote."""
    manifest = json.loads(MANIFEST.read_text())
    out: dict[str, dict[str, Path]] = {}
    for name in MODELS + [CATEGORICAL]:
        out[name] = {}
        for fmt in FORMATS:
            path = FIXTURE_DIR / f"{name}.{fmt}"
            digest = manifest["files"].get(path.name)
            if digest is None or sha256_file(path) != digest:
                raise AssertionError(f"{path} does not match {MANIFEST.name}: edited by hand? "
                                     "Regenerate with tests/fixtures/regenerate_pmml.py")
            out[name][fmt] = path
    return out

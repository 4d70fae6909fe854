"""Shared fixtures for the model_formats tests: small synthetic data and models trained on it.

Nothing is downloaded: every model is trained here, on data generated with a fixed seed. The
inputs are float32-representable doubles so that every runtime (float32 ONNX trees, float64
scikit-learn, JSON-fed PMML) sees exactly the same numbers.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

FEATURES = ["amount", "age_days", "velocity", "ratio"]
N_TRAIN = 3000
N_SCORE = 10_000


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
    """Why PMML tests cannot run here, or None. Only a missing/unusable toolchain skips."""
    try:
        import pypmml  # noqa: F401
    except ImportError as exc:
        return f"pypmml is not installed ({exc})"
    from model_formats.export import pmml_export_available

    ok, reason = pmml_export_available()
    return None if ok else reason


@functools.cache
def cached_pmml() -> dict:
    from model_formats.export import PmmlExportError, export_pmml

    reason = pmml_skip_reason()
    if reason:
        pytest.skip(f"PMML tests need sklearn2pmml, pypmml and Java: {reason}")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the patch-version notice and sklearn2pmml's own chatter
        for name, est in cached_models().items():
            try:
                out[name] = export_pmml(est, FEATURES, artifact_dir() / f"{name}.pmml", name=name, version="7")
            except PmmlExportError as exc:
                if "has expired" in str(exc):
                    pytest.skip(f"the installed sklearn2pmml has expired and refuses to convert: {exc}")
                raise
    return out


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
    if pmml_skip_reason():
        pytest.skip(f"PMML tests need sklearn2pmml, pypmml and Java: {pmml_skip_reason()}")
    from model_formats.pmml_model import PmmlRuntime

    PmmlRuntime.acquire()
    yield PmmlRuntime
    PmmlRuntime.release()


@pytest.fixture(scope="session")
def pmml_files(pmml_jvm) -> dict:
    return cached_pmml()

def train_categorical():
    """A pipeline with a string categorical column (ColumnTransformer + OneHotEncoder)."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(3)
    n = 1500
    df = pd.DataFrame({
        "amount": rng.normal(size=n).astype(np.float32).astype(np.float64),
        "channel": rng.choice(["web", "pos", "atm"], n),
        "age_days": rng.normal(size=n).astype(np.float32).astype(np.float64),
    })
    y = ((df.amount > 0) ^ (df.channel == "atm")).astype(np.int64)
    pipe = Pipeline([
        ("ct", ColumnTransformer([("num", StandardScaler(), ["amount", "age_days"]),
                                  ("cat", OneHotEncoder(handle_unknown="error"), ["channel"])])),
        ("clf", LogisticRegression(max_iter=500)),
    ]).fit(df, y)
    return pipe, df

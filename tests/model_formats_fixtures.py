"""Shared fixtures for the model_formats tests: small synthetic data and models trained on it.

Nothing is downloaded: every model is trained here, on data generated with a fixed seed. The
inputs are float32-representable doubles so that every runtime (float32 ONNX trees, float64
scikit-learn, JSON-fed PMML) sees exactly the same numbers.
"""
from __future__ import annotations

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


@pytest.fixture(scope="session")
def trained_models() -> dict:
    return train_models()


@pytest.fixture(scope="session")
def score_data() -> np.ndarray:
    X, _, _ = make_data(N_SCORE, seed=2)
    return X


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("model_formats")


@pytest.fixture(scope="session")
def onnx_files(trained_models, model_dir) -> dict:
    from model_formats.export import export_onnx

    return {name: export_onnx(est, FEATURES, model_dir / f"{name}.onnx", name=name, version="7")
            for name, est in trained_models.items()}


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

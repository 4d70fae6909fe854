"""Conformance: models exported the way users export them, scored through ``load_model(...).predict``
and compared per row with the native model (or a reference evaluator), tolerance 1e-6 absolute or
relative.

Exporters: skl2onnx with its defaults (ZipMap classifiers, no metadata) and non-default options,
onnxmltools for LightGBM and XGBoost, skops pipelines. PMML conformance (hand-written files, one
feature each, against the JPMML reference evaluator) is in test_model_conformance_pmml.py.
Every model is tiny (a few hundred rows, a few trees): each test takes about a second.
"""
from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest

from model_formats import LABEL, SCORE, ModelLoadError, load_model

TOL = 1e-6
N = 400


def close(got, ref, tol: float = TOL) -> bool:
    """Per element: within ``tol`` absolute or ``tol`` relative."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    diff = np.abs(got - ref)
    return bool(np.all((diff <= tol) | (diff <= tol * np.abs(ref))))


def data(seed: int = 0, nan_share: float = 0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    y3 = np.digitize(X[:, 0], [-0.5, 0.5]).astype(np.int64)
    if nan_share:
        X[rng.random(X.shape) < nan_share] = np.nan
    return X, y, y3


def arrow_batch(X: np.ndarray, names=None) -> pa.RecordBatch:
    """NaN becomes Arrow null, as pandas -> Arrow does."""
    names = names or [f"x{j}" for j in range(X.shape[1])]
    return pa.RecordBatch.from_arrays([pa.array(X[:, j], from_pandas=True) for j in range(X.shape[1])], names=names)


def probabilities(out: pa.RecordBatch, classes) -> np.ndarray:
    return np.column_stack([out.column(f"probability_{c}").to_numpy(zero_copy_only=False) for c in classes])


def save(proto, path):
    path.write_bytes(proto.SerializeToString())
    return path


def assert_matches_native(model, est, X: np.ndarray, names=None):
    """Every row valid, probabilities/values and labels as the native estimator's."""
    r = model.validate(arrow_batch(X, names))
    assert r.valid.num_rows == len(X), r.reasons[:5]
    out = model.predict(r.valid)
    if model.task == "regression":
        assert close(out.column(SCORE).to_numpy(), est.predict(X))
        return out
    proba = est.predict_proba(X)
    assert close(probabilities(out, model.classes), proba), np.abs(probabilities(out, model.classes) - proba).max()
    assert [str(v) for v in out.column(LABEL).to_pylist()] == [str(v) for v in est.predict(X)]
    return out


# --- skl2onnx, default options: ZipMap classifiers, no metadata --------------------------------

@pytest.mark.parametrize("tensor", ["float", "double"])
@pytest.mark.parametrize("kind", ["logreg", "forest_strings", "hgb_multi"])
def test_skl2onnx_default_zipmap_classifiers(kind, tensor, tmp_path):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y, y3 = data()
    if tensor == "double":
        X = X.astype(np.float64)
    est, target = {
        "logreg": (LogisticRegression(), y),
        "forest_strings": (RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0),
                           np.array(["fraud", "ok", "review"])[y3]),
        "hgb_multi": (HistGradientBoostingClassifier(max_iter=5, random_state=0), y3),
    }[kind]
    est.fit(X, target)
    Tensor = FloatTensorType if tensor == "float" else DoubleTensorType
    proto = to_onnx(est, initial_types=[("X", Tensor([None, 4]))])  # default: ZipMap output
    assert any(n.op_type == "ZipMap" for n in proto.graph.node)
    model = load_model(save(proto, tmp_path / "m.onnx"))  # double ZipMap: onnxruntime alone refuses it
    assert model.input_names == ["x0", "x1", "x2", "x3"]
    assert [str(c) for c in model.classes] == [str(c) for c in est.classes_]
    assert "zipmap" in model.metadata
    assert_matches_native(model, est, X)


def test_skl2onnx_non_default_options(tmp_path):
    """zipmap=False, raw scores and a columnar (one input per column) pipeline with strings."""
    import pandas as pd
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y, _ = data()
    est = LogisticRegression().fit(X, y)
    proto = to_onnx(est, X[:1], options={id(est): {"zipmap": False, "output_class_labels": True}})
    assert_matches_native(load_model(save(proto, tmp_path / "plain.onnx")), est, X)

    rng = np.random.default_rng(1)
    df = pd.DataFrame({"amount": X[:, 0], "channel": rng.choice(["web", "pos", "atm"], N)})
    target = ((df.amount > 0) ^ (df.channel == "atm")).astype(int)
    pipe = Pipeline([("ct", ColumnTransformer([("n", StandardScaler(), ["amount"]),
                                              ("c", OneHotEncoder(handle_unknown="ignore"), ["channel"])])),
                     ("clf", LogisticRegression())]).fit(df, target)
    proto = to_onnx(pipe, initial_types=[("amount", FloatTensorType([None, 1])),
                                         ("channel", StringTensorType([None, 1]))])  # ZipMap too
    model = load_model(save(proto, tmp_path / "cols.onnx"))
    assert [(f.name, f.dtype) for f in model.schema.inputs] == [("amount", "float"), ("channel", "string")]
    out = model.predict(model.validate(pa.RecordBatch.from_pandas(df, preserve_index=False)).valid)
    assert close(probabilities(out, model.classes), pipe.predict_proba(df))


def test_skl2onnx_regressor_without_metadata(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingRegressor

    X, _, _ = data()
    est = GradientBoostingRegressor(n_estimators=10, max_depth=3, random_state=0).fit(X, X[:, 0] * 3 - X[:, 1])
    model = load_model(save(to_onnx(est, X[:1]), tmp_path / "reg.onnx"))
    assert model.task == "regression"
    out = model.predict(model.validate(arrow_batch(X)).valid)
    # float32 trees: thresholds and leaf sums in single precision
    assert close(out.column(SCORE).to_numpy(), est.predict(X), tol=1e-5)


def test_onnxruntime_refusal_points_to_models_export(tmp_path):
    import onnx

    path = tmp_path / "broken.onnx"
    X, y, _ = data()
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    proto = to_onnx(LogisticRegression().fit(X, y), X[:1], options={"zipmap": False})
    proto.graph.node[0].op_type = "NoSuchOp"
    onnx.save_model(proto, str(path))
    with pytest.raises(ModelLoadError, match="streamscore models export"):
        load_model(path)


# --- NaN: tree ensembles that route missing values (HGB, LightGBM, XGBoost) ----------------------

def test_hgb_export_without_metadata_accepts_nan_and_null(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    X, y, _ = data(nan_share=0.1)
    hgb = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(X, y)
    model = load_model(save(to_onnx(hgb, X[:1], options={"zipmap": False}), tmp_path / "hgb.onnx"))
    assert all(f.allow_nan for f in model.schema.inputs)
    assert arrow_batch(X).column(0).null_count > 0  # NaN arrived as Arrow null
    assert_matches_native(model, hgb, X)

    # a RandomForest accepts NaN in scikit-learn but its ONNX graph routes it differently: refused
    clean, _, _ = data()
    rf = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(clean, y)
    model = load_model(save(to_onnx(rf, clean[:1]), tmp_path / "rf.onnx"))
    assert not any(f.allow_nan for f in model.schema.inputs)
    r = model.validate(arrow_batch(X))
    assert len(r.rejected_index) and all(reason.startswith("missing:") for reason in r.reasons)


def _lightgbm(task: str, X, y):
    import lightgbm as lgb

    est = (lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier)(
        n_estimators=10, num_leaves=7, min_child_samples=5, verbose=-1, random_state=0)
    return est.fit(X, y)


def _xgboost(task: str, X, y):
    import xgboost as xgb

    est = (xgb.XGBRegressor if task == "regression" else xgb.XGBClassifier)(n_estimators=10, max_depth=3,
                                                                            random_state=0)
    return est.fit(X, y)


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_onnxmltools_exports_with_missing_values(library, task, tmp_path):
    pytest.importorskip(library)
    pytest.importorskip("onnxmltools")
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y, y3 = data(seed=2, nan_share=0.1)
    target = {"binary": y, "multiclass": y3, "regression": np.nan_to_num(X[:, 0]) * 2.0 + 1.0}[task]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = (_lightgbm if library == "lightgbm" else _xgboost)(task, X, target)
        convert = convert_lightgbm if library == "lightgbm" else convert_xgboost
        proto = convert(est, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=15)
    model = load_model(save(proto, tmp_path / f"{library}.onnx"), input_names=["a", "b", "c", "d"])
    assert model.input_names == ["a", "b", "c", "d"]
    assert all(f.allow_nan for f in model.schema.inputs)
    assert model.task == ("regression" if task == "regression" else "classification")
    assert_matches_native(model, est, X, names=["a", "b", "c", "d"])


# --- names and silence ------------------------------------------------------------------------

def test_input_names_option_unknown_keywords_and_mismatching_batches(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    X, y, _ = data()
    est = LogisticRegression().fit(X, y)
    path = save(to_onnx(est, X[:1], options={"zipmap": False}), tmp_path / "m.onnx")
    names = ["amount", "age", "velocity", "ratio"]
    model = load_model(path, input_names=names)
    assert model.input_names == names
    assert_matches_native(model, est, X, names=names)
    with pytest.raises(ModelLoadError, match="4 wide"):
        load_model(path, input_names=["a", "b"])
    with pytest.raises(TypeError, match="unknown keyword"):
        load_model(path, feature_nmaes=names)
    # predict() on a batch without the model's columns raises (it used to read one column for all)
    with pytest.raises(ValueError, match="'age' is absent"):
        model.predict(pa.RecordBatch.from_arrays([pa.array(X[:, 0])], names=["amount"]))
    with pytest.raises(ValueError, match="absent"):
        load_model(path).predict(arrow_batch(X, names))


# --- scikit-learn pipelines (skops) and their ONNX exports ----------------------------------------

def _frame_with_bool_and_nan():
    import pandas as pd

    X, y, _ = data(seed=4)
    df = pd.DataFrame({"amount": X[:, 0].astype(np.float64), "age": X[:, 1].astype(np.float64),
                       "is_new": X[:, 2] > 0})
    df.loc[df.index % 7 == 0, "amount"] = np.nan
    target = ((np.nan_to_num(df.amount) + df.is_new) > 0.5).astype(int)
    return df, target


def test_skops_pipeline_with_imputer_and_boolean_feature(tmp_path):
    """NaN judged over the pipeline (the imputer handles it, not the GBM); a boolean column scored as
    scikit-learn scores it; the ONNX export carries allow_nan for the imputed columns."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    from model_formats.export import export_onnx, export_skops

    df, target = _frame_with_bool_and_nan()
    pipe = make_pipeline(SimpleImputer(), GradientBoostingClassifier(n_estimators=10, max_depth=2,
                                                                     random_state=0)).fit(df, target)
    skops = load_model(export_skops(pipe, None, tmp_path / "p.skops"))
    assert [f.allow_nan for f in skops.schema.inputs] == [True, True, True]
    batch = pa.RecordBatch.from_pandas(df, preserve_index=False)  # NaN -> null, booleans as booleans
    assert batch.column(0).null_count > 0 and batch.schema.field("is_new").type == pa.bool_()
    r = skops.validate(batch)
    assert r.valid.num_rows == len(df), r.reasons[:3]
    assert close(probabilities(skops.predict(r.valid), skops.classes), pipe.predict_proba(df))

    onnx_model = load_model(export_onnx(pipe, None, tmp_path / "p.onnx"))
    assert all(f.allow_nan for f in onnx_model.schema.inputs)
    r = onnx_model.validate(batch)
    assert r.valid.num_rows == len(df)
    assert close(probabilities(onnx_model.predict(r.valid), onnx_model.classes), pipe.predict_proba(df), tol=1e-5)


def test_nan_judged_over_the_pipeline_not_its_last_step():
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from model_formats.sklearn_model import nan_handled_columns

    df, target = _frame_with_bool_and_nan()
    names = list(df.columns)
    fit = lambda est: est.fit(df.fillna(0.0) if "Logistic" in str(est) and "Imputer" not in str(est) else df, target)  # noqa: E731
    assert nan_handled_columns(fit(make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=3))),
                               names) == set(names)
    assert nan_handled_columns(fit(make_pipeline(StandardScaler(), LogisticRegression())), names) == set()
    ct = ColumnTransformer([("imp", SimpleImputer(), ["amount"]), ("keep", "passthrough", ["age", "is_new"])])
    assert nan_handled_columns(fit(make_pipeline(ct, LogisticRegression())), names) == {"amount"}
    rf = fit(RandomForestClassifier(n_estimators=3, random_state=0))
    assert nan_handled_columns(rf, names) == set(names)              # scikit-learn routes NaN itself
    assert nan_handled_columns(rf, names, onnx=True) == set()        # its ONNX graph does not


def test_models_export_allow_nan_option(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from model_formats.export import export_onnx

    X, y, _ = data()
    est = LogisticRegression().fit(X, y)
    path = export_onnx(est, ["a", "b", "c", "d"], tmp_path / "m.onnx", allow_nan=["a"])
    assert [f.allow_nan for f in load_model(path).schema.inputs] == [True, False, False, False]
    with pytest.raises(ValueError, match="not inputs"):
        export_onnx(est, ["a", "b", "c", "d"], tmp_path / "m.onnx", allow_nan=["zz"])


def test_config_model_input_names_reach_load_model(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from jobs.config import JobConfig

    X, y, _ = data()
    path = save(to_onnx(LogisticRegression().fit(X, y), X[:1]), tmp_path / "m.onnx")
    cfg = JobConfig.model_validate({"model": {"path": str(path), "input_names": ["a", "b", "c", "d"]}})
    assert cfg.model.load_options() == {"input_names": ["a", "b", "c", "d"]}
    assert load_model(cfg.model.path, **cfg.model.load_options()).input_names == ["a", "b", "c", "d"]


# --- text models ------------------------------------------------------------------------------

SENTIMENT = [("I love this movie", 1), ("great fun and great acting", 1), ("terrible plot, awful", 0),
             ("I hate it", 0), ("what a great day", 1), ("awful awful service", 0), ("love love love", 1),
             ("not good, boring", 0), ("Ça c'est GÉNIAL, love it", 1), ("boring and awful", 0)]


def _sentiment_pipelines():
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    texts = [t for t, _ in SENTIMENT] * 4
    y = [s for _, s in SENTIMENT] * 4
    plain = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, y)
    df = pd.DataFrame({"text": texts, "length": [float(len(t)) for t in texts]})
    columns = make_pipeline(ColumnTransformer([("words", TfidfVectorizer(), "text"),
                                               ("n", StandardScaler(), ["length"])]),
                            LogisticRegression()).fit(df, y)
    return plain, columns, df


def test_text_pipelines_skops_and_onnx(tmp_path):
    """TfidfVectorizer on a text column: the schema says string, every row scores, as scikit-learn."""
    from model_formats.export import export_onnx, export_skops

    plain, columns, df = _sentiment_pipelines()
    unseen = ["LOVE it", "awful, just awful", "", "Été: génial"]
    batch = pa.RecordBatch.from_pydict({"text": [t for t, _ in SENTIMENT] + unseen, "extra": list(range(14))})
    for model in (load_model(export_skops(plain, None, tmp_path / "s.skops")),
                  load_model(export_onnx(plain, None, tmp_path / "s.onnx"))):
        assert [(f.name, f.dtype, f.allowed_values) for f in model.schema.inputs] == [("text", "string", None)]
        r = model.validate(batch)
        assert r.valid.num_rows == 14, r.reasons
        out = model.predict(r.valid)
        assert close(out.column("probability_1").to_numpy(), plain.predict_proba(batch.column("text").to_pylist())[:, 1],
                     tol=1e-5), model.format
    cols = pa.RecordBatch.from_pandas(df, preserve_index=False)
    for model in (load_model(export_skops(columns, None, tmp_path / "c.skops")),
                  load_model(export_onnx(columns, None, tmp_path / "c.onnx"))):
        assert [(f.name, f.dtype) for f in model.schema.inputs] == [("text", "string"), ("length", "double" if
                                                                     model.format == "sklearn" else "float")]
        out = model.predict(model.validate(cols).valid)
        assert close(out.column("probability_1").to_numpy(), columns.predict_proba(df)[:, 1], tol=1e-5), model.format

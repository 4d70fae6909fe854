"""model_formats: one scoring interface, the ONNX path, shared validation, hostile ONNX files.

Real runtimes, no mocks; models are trained on small synthetic data in session fixtures.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from model_formats import (
    LABEL, SCORE, FieldSpec, Model, ModelLoadError, ModelSchema, load_model, validate_batch,
)
from model_formats_fixtures import (  # noqa: F401  (pytest fixtures)
    FEATURES, as_batch, model_dir, onnx_files, score_data, trained_models,
)


# --- ONNX: export, load, schema, agreement with scikit-learn ---------------------------------

def test_onnx_metadata_and_schema(onnx_files):
    m = load_model(onnx_files["forest"])
    assert isinstance(m, Model)
    assert (m.name, m.version, m.format) == ("forest", "7", "onnx")
    assert m.schema.input_names == FEATURES
    assert all(f.required and not f.allow_nan and f.dtype == "float" for f in m.schema.inputs)
    assert [f.name for f in m.schema.outputs] == [SCORE, LABEL, "probability_0", "probability_1"]
    assert m.task == "classification" and list(m.classes) == [0, 1]
    assert m.metadata["sklearn_estimator"] == "RandomForestClassifier"


@pytest.mark.parametrize("name", ["logreg", "forest", "gbm", "hgb_multi"])
def test_onnx_agrees_with_sklearn(name, onnx_files, trained_models, score_data):
    import pandas as pd

    est = trained_models[name]
    m = load_model(onnx_files[name], intra_op_num_threads=1)
    out = m.predict(as_batch(score_data))
    assert out.num_rows == len(score_data)
    proba = est.predict_proba(pd.DataFrame(score_data, columns=FEATURES))
    got = np.column_stack([out.column(f"probability_{c}").to_numpy() for c in est.classes_])
    assert np.abs(got - proba).max() < 1e-5
    labels = out.column(LABEL).to_numpy()
    flips = (labels != est.classes_[proba.argmax(axis=1)])
    # a flip can only happen where two classes tie within float32 precision
    assert flips.sum() <= 2
    if len(est.classes_) == 2:
        assert np.abs(out.column(SCORE).to_numpy() - proba[:, 1]).max() < 1e-5
    else:
        assert np.abs(out.column(SCORE).to_numpy() - proba.max(axis=1)).max() < 1e-5


def test_onnx_dict_batch_and_empty_batch(onnx_files, score_data):
    m = load_model(onnx_files["logreg"])
    out = m.predict({f: score_data[:5, j] for j, f in enumerate(FEATURES)})
    assert out.num_rows == 5
    empty = m.predict({f: np.empty(0) for f in FEATURES})
    assert empty.num_rows == 0 and empty.schema.names[:2] == [SCORE, LABEL]


def test_onnx_regressor(model_dir, score_data):
    from sklearn.ensemble import GradientBoostingRegressor

    from model_formats.export import export_onnx

    est = GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0)
    est.fit(score_data[:2000], score_data[:2000, 0] * 3 - score_data[:2000, 1])
    m = load_model(export_onnx(est, FEATURES, model_dir / "reg.onnx", name="reg", version="1"))
    assert m.task == "regression" and [f.name for f in m.schema.outputs] == [SCORE, LABEL]
    out = m.predict(as_batch(score_data[:1000]))
    assert np.abs(out.column(SCORE).to_numpy() - est.predict(score_data[:1000])).max() < 1e-4


def test_onnx_nan_support_only_where_the_conversion_keeps_it(onnx_files):
    assert all(f.allow_nan for f in load_model(onnx_files["hgb_multi"]).schema.inputs)
    assert not any(f.allow_nan for f in load_model(onnx_files["forest"]).schema.inputs)


# --- shared validation ------------------------------------------------------------------------

def test_validation_splits_bad_rows_with_reasons(onnx_files):
    m = load_model(onnx_files["forest"])
    batch = {
        "amount": np.array([1.0, np.nan, 2.0, 3.0, 4.0, 5.0]),
        "age_days": np.array([1, 2, None, "x", "2.5", 7], dtype=object),
        "velocity": np.array([1.0, 2.0, 3.0, np.inf, 1.0, 1.0]),
        "ratio": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
        "extra": np.array(["ignored"] * 6),
    }
    r = m.validate(batch)
    assert list(r.valid_index) == [0, 4, 5]
    assert list(r.rejected_index) == [1, 2, 3]
    assert r.reasons == ["nan:amount", "missing:age_days", "wrong_type:age_days;non_finite:velocity"]
    assert r.valid.schema.names == FEATURES and r.valid.num_rows == 3
    assert r.valid.column(1).to_pylist() == [1.0, 2.5, 7.0]  # "2.5" read as a number
    out = m.predict(r.valid)
    assert out.num_rows == 3


def test_validation_missing_column_and_arrow_input(onnx_files, score_data):
    m = load_model(onnx_files["logreg"])
    rb = as_batch(score_data[:4]).drop_null() if hasattr(pa.RecordBatch, "drop_null") else as_batch(score_data[:4])
    rb = pa.RecordBatch.from_arrays([rb.column(i) for i in range(3)], names=FEATURES[:3])
    r = m.validate(rb)
    assert r.valid.num_rows == 0 and r.reasons == ["missing_field:ratio"] * 4


def test_validation_types_domains_and_nullable_fields():
    schema = ModelSchema(
        inputs=(
            FieldSpec("x", "double"),
            FieldSpec("n", "integer"),
            FieldSpec("color", "string", allowed_values=("red", "green")),
            FieldSpec("opt", "double", required=False, allow_nan=True),
            FieldSpec("flag", "boolean"),
        ),
        outputs=(),
    )
    rb = pa.RecordBatch.from_pydict({
        "x": pa.array([1.0, 2.0, 3.0, 4.0, 5.0]),
        "n": pa.array([1.0, 2.5, 3.0, None, 5.0]),
        "color": pa.array(["red", "green", "blue", "red", None]),
        "opt": pa.array([None, 1.0, float("nan"), 2.0, 3.0]),
        "flag": pa.array([1, 0, 1, 1, 1], type=pa.int64()),  # 0/1 integers read as booleans
    })
    r = validate_batch(schema, rb)
    assert list(r.valid_index) == [0]
    assert r.reasons == ["wrong_type:n", "out_of_domain:color=blue", "missing:n", "missing:color"]
    assert r.valid.schema.types == [pa.float64(), pa.int64(), pa.string(), pa.float64(), pa.bool_()]
    # integers handed to a string field compare as text (categories "3"); fractions and booleans are wrong
    r2 = validate_batch(schema, {"x": np.array([1.0, 2.0, 3.0]), "n": np.array([1, 2, 3]),
                                 "color": np.array([3, 2.5, True], dtype=object),
                                 "opt": np.array([1.0] * 3), "flag": np.array([True] * 3)})
    assert r2.reasons == ["out_of_domain:color=3", "wrong_type:color", "wrong_type:color"]


# --- hostile and broken ONNX files ------------------------------------------------------------

def _external_data_model(tmp_path, location: str):
    import onnx
    from onnx import TensorProto, helper

    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1, 4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "W"], ["variable"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "models" / "ext.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_external_data_outside_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 16)
    for location in ("../secret.bin", str(secret)):
        with pytest.raises(ModelLoadError, match="external data"):
            load_model(_external_data_model(tmp_path, location))
    # a symlink inside the folder pointing outside is refused too
    (tmp_path / "models").mkdir(exist_ok=True)
    link = tmp_path / "models" / "link.bin"
    link.symlink_to(secret)
    with pytest.raises(ModelLoadError, match="outside"):
        load_model(_external_data_model(tmp_path, "link.bin"))


def test_onnx_external_data_inside_folder_loads(tmp_path):
    path = _external_data_model(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    m = load_model(path)
    assert m.task == "regression"
    # overrunning the file is refused
    (path.parent / "w.bin").write_bytes(b"\x00" * 8)
    with pytest.raises(ModelLoadError, match="overruns"):
        load_model(path)


def test_truncated_and_mislabelled_onnx_refused(onnx_files, tmp_path):
    data = onnx_files["gbm"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError):
        load_model(cut)
    wrong = tmp_path / "model.txt"
    wrong.write_bytes(data)
    with pytest.raises(ModelLoadError, match="unsupported model file extension"):
        load_model(wrong)
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_model(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="only local paths"):
        load_model("https://example.invalid/model.onnx")
    assert load_model(f"file://{onnx_files['gbm']}").name == "gbm"


def test_string_classes_onnx_and_skops(model_dir, score_data):
    from sklearn.linear_model import LogisticRegression

    from model_formats.export import export_onnx, export_skops

    y = np.where(score_data[:2000, 0] > 0.2, "fraud", "ok")
    est = LogisticRegression().fit(score_data[:2000], y)
    models = [load_model(export_onnx(est, FEATURES, model_dir / "str.onnx", name="str")),
              load_model(export_skops(est, FEATURES, model_dir / "str.skops", name="str"))]
    outs = [m.predict(as_batch(score_data[:500])) for m in models]
    for m, out in zip(models, outs):
        assert list(m.classes) == ["fraud", "ok"]
        assert out.schema.field(LABEL).type == pa.string()
        assert out.schema.names == [SCORE, LABEL, "probability_fraud", "probability_ok"]
    assert outs[0].column(LABEL).to_pylist() == outs[1].column(LABEL).to_pylist()
    assert np.abs(outs[0].column(SCORE).to_numpy() - est.predict_proba(score_data[:500])[:, 1]).max() < 1e-5

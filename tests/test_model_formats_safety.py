"""Hostile and broken model files are refused with clear errors, before any code in them runs.

(ONNX external-data and truncated-ONNX cases are in test_model_formats.py.)
"""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest

from model_formats import ModelLoadError, load_model
from model_formats.sklearn_model import sha256_of
from model_formats_fixtures import (  # noqa: F401  (pytest fixtures)
    FEATURES, pmml_jvm, skops_files, trained_models,
)


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_pickle(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.joblib"
    path.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=4))
    return path, marker


def test_pickle_with_code_refused_without_trust(evil_pickle):
    path, marker = evil_pickle
    with pytest.raises(ModelLoadError, match="run code while loading"):
        load_model(path)
    with pytest.raises(ModelLoadError, match="needs the sha256"):
        load_model(path, trust_pickle=True)
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_model(path, trust_pickle=True, sha256="0" * 64)
    assert not marker.exists()


def test_pickle_renamed_to_another_extension_is_refused(evil_pickle, tmp_path):
    path, marker = evil_pickle
    for ext, match in ((".onnx", "content is pickle"), (".skops", "not a skops archive"), (".pmml", "not XML")):
        renamed = tmp_path / f"model{ext}"
        renamed.write_bytes(path.read_bytes())
        with pytest.raises(ModelLoadError, match=match):
            load_model(renamed)
    assert not marker.exists()


def test_trusted_pickle_with_matching_digest_loads(trained_models, tmp_path):
    import joblib

    path = tmp_path / "logreg.pkl"
    joblib.dump(trained_models["logreg"], path)
    m = load_model(path, trust_pickle=True, sha256=sha256_of(path), name="lr", version="2")
    assert (m.format, m.name, m.version, m.schema.input_names) == ("sklearn", "lr", "2", FEATURES)
    assert m.metadata["sha256"] == sha256_of(path)
    out = m.predict({f: np.zeros(3) for f in FEATURES})
    assert out.num_rows == 3


# --- PMML: XML attacks --------------------------------------------------------------------

_PMML_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
{doctype}
<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4">
  <Header description="{description}"/>
  <DataDictionary>
    <DataField name="x" optype="continuous" dataType="double"/>
    <DataField name="y" optype="continuous" dataType="double"/>
  </DataDictionary>
  <RegressionModel functionName="regression" modelName="lin">
    <MiningSchema>
      <MiningField name="x"/>
      <MiningField name="y" usageType="target"/>
    </MiningSchema>
    <RegressionTable intercept="1.5">
      <NumericPredictor name="x" coefficient="2"/>
    </RegressionTable>
  </RegressionModel>
</PMML>
"""


def _pmml(tmp_path, doctype: str = "", description: str = "plain", name: str = "m.pmml"):
    path = tmp_path / name
    path.write_text(_PMML_TEMPLATE.format(doctype=doctype, description=description))
    return path


def test_hand_written_pmml_scores(pmml_jvm, tmp_path):
    m = load_model(_pmml(tmp_path))
    try:
        assert (m.name, m.task, m.schema.input_names) == ("lin", "regression", ["x"])
        out = m.predict({"x": np.array([0.0, 1.0, -2.5])})
        assert out.column("score").to_pylist() == [1.5, 3.5, -3.5]
    finally:
        m.close()


@pytest.mark.parametrize("doctype, description", [
    # classic XXE: an external entity reading a local file into the model
    ('<!DOCTYPE PMML [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>', "&xxe;"),
    # external DTD
    ('<!DOCTYPE PMML SYSTEM "http://127.0.0.1:9/evil.dtd">', "plain"),
    # billion laughs (entity expansion bomb)
    ('<!DOCTYPE PMML [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
     '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>', "&c;"),
    # a parameter entity pulling an external DTD
    ('<!DOCTYPE PMML [<!ENTITY % ext SYSTEM "file:///etc/passwd"> %ext;]>', "plain"),
])
def test_pmml_with_dtd_or_entities_is_refused(tmp_path, doctype, description):
    path = _pmml(tmp_path, doctype, description)
    with pytest.raises(ModelLoadError, match="DTD|entit|external"):
        load_model(path)


def test_pmml_truncated_or_not_pmml_is_refused(tmp_path):
    data = _pmml(tmp_path).read_bytes()
    cut = tmp_path / "cut.pmml"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not well-formed"):
        load_model(cut)
    other = tmp_path / "other.pmml"
    other.write_text("<?xml version='1.0'?><html><body/></html>")
    with pytest.raises(ModelLoadError, match="not <PMML>"):
        load_model(other)


# --- skops ------------------------------------------------------------------------------------

def test_skops_with_untrusted_function_is_refused(tmp_path):
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "evil.skops"
    sio.dump(FunctionTransformer(func=os.system).fit(np.zeros((2, 1))), path)
    with pytest.raises(ModelLoadError, match=r"not trusted: \['(posix|os)\.system'\].*CLI --trusted-type (posix|os)\.system"):
        load_model(path)


def test_skops_truncated_and_tree_models_load(skops_files, tmp_path):
    data = skops_files["forest"].read_bytes()
    cut = tmp_path / "cut.skops"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_model(cut)
    # tree internals skops does not trust by default are on our short allowlist
    for name in ("forest", "gbm", "hgb_multi"):
        m = load_model(skops_files[name])
        assert m.format == "sklearn" and m.name == name
    with zipfile.ZipFile(skops_files["forest"]) as zf:
        assert "streamscore.json" in zf.namelist()


def test_wrong_extension_and_empty_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty file"):
        load_model(empty)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ModelLoadError):
        load_model(garbage)
    with pytest.raises(ModelLoadError, match="unsupported model file extension"):
        load_model(_pmml(tmp_path, name="model.h5"))
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load_model(tmp_path)

"""The same trained models in ONNX, PMML and skops agree; PMML schema and JVM; the models CLI.

Real runtimes: onnxruntime, PMML4S on a JVM (one for the whole session), scikit-learn via skops.
PMML files are produced by sklearn2pmml (Java); those tests skip only when that toolchain or
pypmml is missing.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from jobs.models_cmd import compare_models
from model_formats import LABEL, SCORE, load_model
from model_formats_fixtures import (  # noqa: F401  (pytest fixtures)
    FEATURES, as_batch, artifact_dir, model_dir, onnx_files, pmml_files, pmml_jvm, score_data, skops_files,
    trained_models, train_categorical,
)

MODELS = ["logreg", "forest", "gbm", "hgb_multi"]


@pytest.mark.parametrize("name", MODELS)
def test_three_formats_agree_on_10k_rows(name, onnx_files, pmml_files, skops_files, score_data):
    models = [load_model(skops_files[name]), load_model(onnx_files[name]), load_model(pmml_files[name])]
    try:
        assert [m.format for m in models] == ["sklearn", "onnx", "pmml"]
        assert all((m.name, m.version) == (name, "7") for m in models)
        batch = as_batch(score_data)
        # ONNX scores in float32: agreement within 1e-5 (measured ~1e-7), no label flips
        report = compare_models(models, batch, tol=1e-5, max_flips=0)
        assert report["ok"], report
        assert report["scored_rows"] == len(score_data) == 10_000
        # PMML (JPMML-SkLearn) computes in double like scikit-learn: agreement to rounding
        exact = compare_models([models[0], models[2]], batch, tol=1e-12, max_flips=0)
        assert exact["ok"], exact
    finally:
        for m in models:
            m.close()


def test_pmml_schema_and_identity(pmml_files):
    m = load_model(pmml_files["gbm"])
    try:
        assert (m.name, m.version, m.format, m.task) == ("gbm", "7", "pmml", "classification")
        assert m.schema.input_names == FEATURES
        # JPMML-SkLearn declares tree inputs as float, like scikit-learn's float32 tree thresholds
        assert {f.dtype for f in m.schema.inputs} == {"float"}
        assert all(f.required for f in m.schema.inputs)
        assert list(m.classes) == [0, 1]
        assert m.metadata["producer"].startswith("SkLearn2PMML")
        r = m.validate({"amount": np.array([1.0, np.nan]), "age_days": np.array([1.0, 1.0]),
                        "velocity": np.array([0.0, 0.0]), "ratio": np.array([0.0, 0.0])})
        assert r.reasons == ["nan:amount"] and list(r.valid_index) == [0]
        out = m.predict(r.valid)
        assert out.schema.names == [SCORE, LABEL, "probability_0", "probability_1"]
    finally:
        m.close()


def test_pmml_single_rows_and_exact_inputs(pmml_files, trained_models):
    """The JSON path is exact: values that a 10-decimal rounding would change still agree."""
    import pandas as pd

    est = trained_models["logreg"]
    m = load_model(pmml_files["logreg"])
    try:
        X = np.array([[1e-12 + 0.123456789012345, -3.3333333333333335, 7.000000000123, 1e-11]])
        out = m.predict({f: X[:, j] for j, f in enumerate(FEATURES)})
        ref = est.predict_proba(pd.DataFrame(X, columns=FEATURES))[0, 1]
        assert abs(out.column(SCORE)[0].as_py() - ref) < 1e-15
    finally:
        m.close()


def test_categorical_pipeline_domain_in_all_three_formats(pmml_jvm, model_dir):
    import warnings

    from model_formats.export import export_onnx, export_pmml, export_skops

    pipe, df = train_categorical()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = [export_skops(pipe, None, model_dir / "cat.skops", name="cat"),
                 export_onnx(pipe, None, model_dir / "cat.onnx", name="cat"),
                 export_pmml(pipe, None, model_dir / "cat.pmml", name="cat")]
    models = [load_model(p) for p in paths]
    try:
        batch = {"amount": np.array([0.5, 0.1, -1.0, 2.0]), "channel": np.array(["web", "zzz", "atm", None], dtype=object),
                 "age_days": np.array([0.0, 1.0, 2.0, 3.0])}
        for m in models:
            spec = next(f for f in m.schema.inputs if f.name == "channel")
            assert (spec.dtype, set(spec.allowed_values)) == ("string", {"atm", "pos", "web"}), m.format
            r = m.validate(batch)
            assert r.reasons == ["out_of_domain:channel=zzz", "missing:channel"], m.format
            assert list(r.valid_index) == [0, 2]
        sample = pa.RecordBatch.from_pandas(df, preserve_index=False)
        report = compare_models(models, sample, tol=1e-5)
        assert report["ok"], report
    finally:
        for m in models:
            m.close()


def test_pmml_jvm_is_terminated_when_the_last_model_closes(pmml_files):
    """In a fresh process: load, check the java process exists, close, check it is gone."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent.parent)!r})
        from model_formats import load_model
        from model_formats.pmml_model import PmmlRuntime
        a = load_model({str(pmml_files['logreg'])!r})
        b = load_model({str(pmml_files['gbm'])!r})
        pid = PmmlRuntime.pid()
        os.kill(pid, 0)                      # alive
        a.close()
        assert PmmlRuntime.pid() == pid      # still shared by b
        b.close()
        assert PmmlRuntime.pid() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("terminated")
        else:
            with open(f"/proc/{{pid}}/stat") as fh:
                state = fh.read().split()[2]
            print("terminated" if state == "Z" else "alive")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "terminated"


# --- CLI --------------------------------------------------------------------------------------

def _cli(*argv) -> int:
    """`streamscore models ...` with only the models command group registered (the same
    register() jobs.cli calls), so these tests do not depend on the other command groups."""
    import argparse

    from jobs import models_cmd

    parser = argparse.ArgumentParser(prog="streamscore")
    models_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args) or 0)


@pytest.fixture(scope="module")
def sample_csv(score_data, model_dir):
    path = model_dir / "sample.csv"
    import pyarrow.csv as pcsv

    pcsv.write_csv(pa.Table.from_batches([as_batch(score_data[:2000])]), path)
    return path


def test_cli_inspect(onnx_files, capsys):
    assert _cli("models", "inspect", str(onnx_files["forest"]), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "forest" and info["format"] == "onnx"
    assert [f["name"] for f in info["inputs"]] == FEATURES
    assert _cli("models", "inspect", str(onnx_files["forest"])) == 0
    assert "velocity" in capsys.readouterr().out
    assert _cli("models", "inspect", str(onnx_files["forest"]) + ".missing") == 2


def test_cli_check_agree_and_disagree(onnx_files, pmml_files, skops_files, sample_csv, capsys):
    assert _cli("models", "check", str(skops_files["gbm"]), str(onnx_files["gbm"]), str(pmml_files["gbm"]),
                "--sample", str(sample_csv), "--tol", "1e-5") == 0
    assert "OK" in capsys.readouterr().out
    # two different models: the check must fail
    assert _cli("models", "check", str(onnx_files["gbm"]), str(onnx_files["forest"]),
                "--sample", str(sample_csv), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["comparisons"][0]["label_flips"] > 0 and not report["ok"]


def test_cli_check_catches_a_silently_broken_pmml(pmml_files, skops_files, sample_csv, model_dir, capsys):
    """An export that scores without error but wrongly (here: zeroed coefficients) is caught."""
    import re

    text = pmml_files["logreg"].read_text()
    broken = re.sub(r'coefficient="[^"]+"', 'coefficient="0"', text)
    broken = re.sub(r'intercept="[^"]+"', 'intercept="0"', broken)
    path = model_dir / "logreg-broken.pmml"
    path.write_text(broken)
    assert _cli("models", "check", str(skops_files["logreg"]), str(path), "--sample", str(sample_csv), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert any("every score is 0.5" in p for p in report["problems"])


def test_cli_export_then_check(trained_models, model_dir, sample_csv, pmml_jvm, capsys):
    from model_formats.export import export_skops

    src = export_skops(trained_models["forest"], FEATURES, model_dir / "src" / "forest.skops", name="forest")
    out = model_dir / "exported"
    rc = _cli("models", "export", str(src), "--out", str(out), "--name", "fraud", "--version", "3",
              "--sample", str(sample_csv), "--tol", "1e-5")
    text = capsys.readouterr().out
    assert rc == 0, text
    assert {p.name for p in out.iterdir()} == {"fraud.onnx", "fraud.skops", "fraud.pmml"}
    m = load_model(out / "fraud.onnx")
    assert (m.name, m.version, m.schema.input_names) == ("fraud", "3", FEATURES)

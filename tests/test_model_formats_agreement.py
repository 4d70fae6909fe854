"""The same trained models in ONNX, PMML and skops agree; PMML schema and JVM; the models CLI.

Real runtimes: onnxruntime, PMML4S on a JVM (one for the whole session), scikit-learn via skops.
The three files of each model are the committed ones in tests/fixtures/models/, written from ONE
fit by sklearn2pmml / skl2onnx / skops (tests/fixtures/regenerate_pmml.py), so these tests need
pypmml and Java but not sklearn2pmml.
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
    CATEGORICAL, FEATURES, MANIFEST, MODELS, as_batch, categorical_data, committed, model_dir, pmml_files,
    pmml_jvm, score_data, train_categorical, trained_models,
)


@pytest.mark.parametrize("name", MODELS)
def test_three_formats_agree_on_10k_rows(name, committed, pmml_jvm, score_data):
    models = [load_model(committed[name][fmt]) for fmt in ("skops", "onnx", "pmml")]
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


def test_pmml_single_rows_and_exact_inputs(pmml_files, committed):
    """The JSON path is exact: values that a 10-decimal rounding would change still agree."""
    import pandas as pd

    est = load_model(committed["logreg"]["skops"]).estimator  # the fit the PMML was written from
    m = load_model(pmml_files["logreg"])
    try:
        X = np.array([[1e-12 + 0.123456789012345, -3.3333333333333335, 7.000000000123, 1e-11]])
        out = m.predict({f: X[:, j] for j, f in enumerate(FEATURES)})
        ref = est.predict_proba(pd.DataFrame(X, columns=FEATURES))[0, 1]
        assert abs(out.column(SCORE)[0].as_py() - ref) < 1e-15
    finally:
        m.close()


def test_categorical_pipeline_domain_in_all_three_formats(pmml_jvm, committed):
    df, _ = categorical_data()
    models = [load_model(committed[CATEGORICAL][fmt]) for fmt in ("skops", "onnx", "pmml")]
    try:
        batch = {"amount": np.array([0.5, 0.1, -1.0, 2.0]), "channel": np.array(["web", "zzz", "atm", None], dtype=object),
                 "age_days": np.array([0.0, 1.0, 2.0, 3.0])}
        for m in models:
            spec = next(f for f in m.schema.inputs if f.name == "channel")
            assert (spec.dtype, set(spec.allowed_values)) == ("string", {"atm", "pos", "web"}), m.format
            r = m.validate(batch)
            if m.format == "pmml":
                # PMML's rule for a missing categorical predictor: it adds nothing (JPMML agrees), so the
                # row is scored; scikit-learn's OneHotEncoder(handle_unknown="error") has no such rule
                assert r.reasons == ["out_of_domain:channel=zzz"]
                assert list(r.valid_index) == [0, 2, 3]
                continue
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


def test_cli_inspect(committed, capsys):
    forest = str(committed["forest"]["onnx"])
    assert _cli("models", "inspect", forest, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "forest" and info["format"] == "onnx"
    assert [f["name"] for f in info["inputs"]] == FEATURES
    assert _cli("models", "inspect", forest) == 0
    assert "velocity" in capsys.readouterr().out
    assert _cli("models", "inspect", forest + ".missing") == 2


def test_cli_check_agree_and_disagree(committed, pmml_jvm, sample_csv, capsys):
    gbm = committed["gbm"]
    assert _cli("models", "check", str(gbm["skops"]), str(gbm["onnx"]), str(gbm["pmml"]),
                "--sample", str(sample_csv), "--tol", "1e-5") == 0
    assert "OK" in capsys.readouterr().out
    # two different models: the check must fail
    assert _cli("models", "check", str(gbm["onnx"]), str(committed["forest"]["onnx"]),
                "--sample", str(sample_csv), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["comparisons"][0]["label_flips"] > 0 and not report["ok"]


def test_cli_check_catches_a_silently_broken_pmml(pmml_files, committed, sample_csv, model_dir, capsys):
    """An export that scores without error but wrongly (here: zeroed coefficients) is caught."""
    import re

    text = pmml_files["logreg"].read_text()
    broken = re.sub(r'coefficient="[^"]+"', 'coefficient="0"', text)
    broken = re.sub(r'intercept="[^"]+"', 'intercept="0"', broken)
    path = model_dir / "logreg-broken.pmml"
    path.write_text(broken)
    assert _cli("models", "check", str(committed["logreg"]["skops"]), str(path), "--sample", str(sample_csv),
                "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert any("every score is 0.5" in p for p in report["problems"])


def test_cli_export_then_check(trained_models, model_dir, sample_csv, capsys):
    """`models export` writes every format it can and cross-checks them against the source.
    PMML is written where sklearn2pmml and Java are installed (tests/fixtures/regenerate_pmml.py
    --verify runs this test in such a venv); elsewhere the CLI says why it skips PMML."""
    from model_formats.export import export_skops, pmml_export_available

    src = export_skops(trained_models["forest"], FEATURES, model_dir / "src" / "forest.skops", name="forest")
    out = model_dir / "exported"
    rc = _cli("models", "export", str(src), "--out", str(out), "--name", "fraud", "--version", "3",
              "--sample", str(sample_csv), "--tol", "1e-5")
    text = capsys.readouterr().out
    assert rc == 0, text
    pmml_ok, reason = pmml_export_available()
    written = {p.name for p in out.iterdir()}
    if pmml_ok:
        assert written == {"fraud.onnx", "fraud.skops", "fraud.pmml"}
        m = load_model(out / "fraud.pmml")
        assert (m.name, m.version, m.format) == ("fraud", "3", "pmml")
        m.close()
    else:
        assert written == {"fraud.onnx", "fraud.skops"}
        assert "skipping PMML: sklearn2pmml is not installed" in text
    m = load_model(out / "fraud.onnx")
    assert (m.name, m.version, m.schema.input_names) == ("fraud", "3", FEATURES)


def test_cli_export_pmml_alone_without_sklearn2pmml_is_a_clear_error(trained_models, model_dir, monkeypatch,
                                                                       capsys):
    """Asked for PMML only where sklearn2pmml cannot be imported (hidden here even if installed):
    exit code 2, the reason and the extra to install, and no file written."""
    from model_formats.export import export_skops

    monkeypatch.setitem(sys.modules, "sklearn2pmml", None)  # import sklearn2pmml -> ImportError
    src = export_skops(trained_models["logreg"], FEATURES, model_dir / "src" / "logreg.skops", name="logreg")
    out = model_dir / "exported-pmml-only"
    assert _cli("models", "export", str(src), "--out", str(out), "--formats", "pmml") == 2
    err = capsys.readouterr().err
    assert "sklearn2pmml is not installed" in err and "streamscore[pmml-export]" in err
    assert not out.exists() or not any(out.iterdir())


# --- the committed fixtures ---------------------------------------------------------------------

def test_committed_models_are_the_recipe_fits(committed, trained_models, score_data):
    """The committed skops files are the seeded recipe's fits (so the PMML and ONNX written from
    them are too): a fresh fit of the recipe scores the same. If this fails after a scikit-learn
    upgrade, regenerate the fixtures (tests/fixtures/regenerate_pmml.py)."""
    import pandas as pd

    manifest = json.loads(MANIFEST.read_text())
    assert manifest["files"].keys() == {p.name for files in committed.values() for p in files.values()}
    X = pd.DataFrame(score_data[:2000], columns=FEATURES)
    for name in MODELS:
        est = load_model(committed[name]["skops"]).estimator
        assert type(est) is type(trained_models[name])
        np.testing.assert_allclose(est.predict_proba(X), trained_models[name].predict_proba(X), rtol=0, atol=1e-9,
                                   err_msg=name)
    df, _ = categorical_data()
    cat = load_model(committed[CATEGORICAL]["skops"]).estimator
    fresh, _ = train_categorical()
    np.testing.assert_allclose(cat.predict_proba(df), fresh.predict_proba(df), rtol=0, atol=1e-9)

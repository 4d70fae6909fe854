"""Export a fitted scikit-learn estimator (or pipeline) to ONNX, skops and, optionally, PMML.

Every exported file carries the model's identity and input schema, so `load_model` needs
nothing else:

- ONNX: ``metadata_props`` feature_names (JSON), name, version, task, classes (JSON), allow_nan.
- skops: the estimator itself (``feature_names_in_`` is set when it was fitted on a DataFrame or
  ``feature_names`` is passed) plus a ``<file>.json`` sidecar with name and version.
- PMML: via sklearn2pmml (optional extra; needs Java, see model_formats/README.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _final_estimator(estimator):
    return getattr(estimator, "_final_estimator", estimator)


def is_classifier(estimator) -> bool:
    from sklearn.base import is_classifier as _is

    return bool(_is(estimator))


def allows_nan(estimator) -> bool:
    """Whether the estimator handles NaN itself (e.g. HistGradientBoosting)."""
    try:
        return bool(estimator.__sklearn_tags__().input_tags.allow_nan)
    except Exception:
        return False


def _feature_names(estimator, feature_names: Sequence[str] | None) -> list[str]:
    if feature_names is not None:
        return [str(n) for n in feature_names]
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names]
    from model_formats.sklearn_model import _starts_with_text_vectorizer

    if _starts_with_text_vectorizer(estimator):
        return ["text"]  # a text pipeline fitted on a sequence of documents: one column, named text
    n = getattr(estimator, "n_features_in_", None)
    if n is None:
        raise ValueError("pass feature_names: the estimator does not record them (not fitted?)")
    return [f"x{i}" for i in range(int(n))]


def export_onnx(estimator, feature_names: Sequence[str] | None, path: str | os.PathLike,
                name: str | None = None, version: str = "1", *, target_opset: int | dict | None = None,
                allow_nan: Sequence[str] | str = "auto") -> Path:
    """Convert a fitted estimator/pipeline to ONNX with its schema in metadata_props.

    Numeric models get one 2-D float input named ``input``; pipelines starting with a
    ColumnTransformer get one ``[N, 1]`` input per column (strings for the categorical columns,
    whose fitted domains go to ``categories``). Classifiers export ``label`` and a
    ``probabilities`` tensor (zipmap=False). ``allow_nan`` (metadata the loader reads): "auto" =
    the inputs whose NaN the exported graph handles as scikit-learn does (an imputer before any
    step that refuses NaN, or HistGradientBoosting); "none"; or the list of input names.
    Returns the written path.
    """
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    from model_formats.sklearn_model import (
        _categorical_inputs, _starts_with_text_vectorizer, _text_inputs, _wants_dataframe, is_text_vectorizer,
    )

    path = Path(path)
    text_1d = _starts_with_text_vectorizer(estimator)
    names = _feature_names(estimator, feature_names)
    final = _final_estimator(estimator)
    classifier = is_classifier(estimator)
    options = {id(final): {"zipmap": False}} if classifier else {}
    # text vectorizers lower-case through onnxruntime's StringNormalizer, which needs its locale
    # installed; C.UTF-8 is on every glibc system (skl2onnx would write en_US.UTF-8)
    for step in _all_steps(estimator):
        if is_text_vectorizer(step):
            options[id(step)] = {"locale": "C.UTF-8"}
            if getattr(step, "token_pattern", None) == r"(?u)\b\w\w+\b" and getattr(step, "tokenizer", None) is None:
                # onnxruntime's tokenizer (re2) reads \w as ASCII: "génial" would lose its é. The same
                # tokens as scikit-learn's Unicode \w: runs of 2+ letters, digits or underscores (str.isalnum)
                options[id(step)]["tokenexp"] = r"[\p{L}\p{N}_]{2,}"
    categories = _categorical_inputs(estimator)
    text = set(names) if text_1d else _text_inputs(estimator)
    if text_1d:
        initial_types = [(names[0], StringTensorType([None, 1]))]
    elif categories or text or _wants_dataframe(estimator):
        # column-wise pipelines (ColumnTransformer): one [N, 1] input per column, strings as strings
        initial_types = [(n, StringTensorType([None, 1]) if n in categories or n in text
                          else FloatTensorType([None, 1])) for n in names]
    else:
        initial_types = [("input", FloatTensorType([None, len(names)]))]
    model_name = name or path.stem
    proto = convert_sklearn(estimator, name=model_name, initial_types=initial_types, options=options or None,
                            target_opset=target_opset)
    meta = {
        "feature_names": json.dumps(names),
        "name": model_name,
        "version": str(version),
        "task": "classification" if classifier else "regression",
        "exported_by": "streamscore.model_formats.export",
        "sklearn_estimator": type(final).__name__,
    }
    if categories:
        # onnxruntime fails the whole batch on an unknown category: the domain goes in the schema
        meta["categories"] = json.dumps({n: list(v) for n, v in categories.items() if v is not None})
    if classifier:
        meta["classes"] = json.dumps([_plain(c) for c in final.classes_])
    if isinstance(allow_nan, str) and allow_nan == "auto":
        # Only imputers and HistGradientBoosting's NaN routing survive the conversion as scikit-learn
        # scores them: a RandomForest that accepts NaN in scikit-learn scores it differently in
        # onnxruntime (measured: up to 0.97 apart), so its ONNX schema rejects NaN rows instead.
        from model_formats.sklearn_model import nan_handled_columns

        nan_names = [n for n in names if n in nan_handled_columns(estimator, names, onnx=True)]
    elif isinstance(allow_nan, str) and allow_nan == "none":
        nan_names = []
    else:
        nan_names = [str(n) for n in allow_nan]
        unknown = sorted(set(nan_names) - set(names))
        if unknown:
            raise ValueError(f"allow_nan names {unknown}, which are not inputs ({names})")
    if nan_names:
        meta["allow_nan"] = json.dumps(nan_names)
    onnx.helper.set_model_props(proto, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _all_steps(estimator) -> list:
    """The estimator and every step nested in its pipelines and column transformers."""
    out, todo = [], [estimator]
    while todo:
        step = todo.pop()
        out.append(step)
        todo += [s for _, s in getattr(step, "steps", [])]
        todo += [t for _, t, _ in getattr(step, "transformers_", []) or [] if not isinstance(t, str)]
    return out


# --- skops ------------------------------------------------------------------------------------

from model_formats.sklearn_model import SKOPS_META_MEMBER  # noqa: E402


def export_skops(estimator, feature_names: Sequence[str] | None, path: str | os.PathLike,
                 name: str | None = None, version: str = "1") -> Path:
    """Write the estimator with skops (no pickle, deflate-compressed) plus a ``streamscore.json``
    member (name, version, feature_names) inside the same archive."""
    import zipfile

    import skops.io as sio

    path = Path(path)
    names = _feature_names(estimator, feature_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(estimator, path, compression=zipfile.ZIP_DEFLATED)  # tree arrays shrink ~5x
    meta = {"name": name or path.stem, "version": str(version), "feature_names": names,
            "sklearn_estimator": type(_final_estimator(estimator)).__name__}
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(SKOPS_META_MEMBER, json.dumps(meta))
    return path


# --- PMML (optional: sklearn2pmml + Java) -----------------------------------------------------

# sklearn2pmml's converter reports failed conversions (with the Python package versions) to a
# remote telemetry endpoint, unconditionally. These options route the JVM's HTTP(S) through a
# proxy on a closed local port, so the report fails on this machine instead of leaving it.
NO_TELEMETRY_JAVA_OPTS = [
    "-Dhttps.proxyHost=127.0.0.1", "-Dhttps.proxyPort=9",
    "-Dhttp.proxyHost=127.0.0.1", "-Dhttp.proxyPort=9",
    "-Djava.net.useSystemProxies=false",
]


# scikit-learn version -> version declared to the converter, learnt from its refusal (per process)
_DECLARED_SKLEARN_VERSION: dict[str, str] = {}


class PmmlExportError(RuntimeError):
    """sklearn2pmml is missing, Java is missing, or the converter refused the estimator."""


def pmml_export_available() -> tuple[bool, str]:
    """(available, reason): sklearn2pmml importable and a Java runtime on PATH/JAVA_HOME."""
    from model_formats.pmml_model import find_java

    try:
        import sklearn2pmml  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"sklearn2pmml is not installed ({exc}); pip install 'streamscore[pmml-export]'"
    if not find_java():
        return False, "sklearn2pmml needs a Java runtime (java on PATH or JAVA_HOME)"
    return True, ""


def export_pmml(estimator, feature_names: Sequence[str] | None, path: str | os.PathLike,
                name: str | None = None, version: str = "1", *, target_name: str = "y",
                allow_patch_version_mismatch: bool = True) -> Path:
    """Convert a fitted estimator/pipeline to PMML with sklearn2pmml (JPMML-SkLearn, runs Java).

    The converter supports scikit-learn up to the version it was built against; a newer *patch*
    release of the same minor version (e.g. 1.9.1 against a converter built for 1.9.0) only fixes
    bugs, so with ``allow_patch_version_mismatch`` the pickle handed to the converter declares the
    converter's version (a warning says so). Newer minor versions are refused as the converter says.
    The model's name and version are written to the PMML Header (description / Application).
    """
    import contextlib
    import io
    import re
    import tempfile
    import warnings

    ok, reason = pmml_export_available()
    if not ok:
        raise PmmlExportError(reason)
    import joblib
    import sklearn
    import sklearn.base
    from sklearn2pmml import make_pmml_pipeline, sklearn2pmml

    path = Path(path)
    names = _feature_names(estimator, feature_names)
    import copy

    import sklearn2pmml as s2p_module

    pipeline = make_pmml_pipeline(copy.deepcopy(estimator), active_fields=names, target_fields=[target_name])
    # what sklearn2pmml() does to an estimator object before pickling it (tags, extension classes);
    # done here because the pickle is written here (to control the declared scikit-learn version)
    escape = getattr(s2p_module, "_escape", None)
    if escape is not None:
        pipeline = escape(pipeline, escape_func=escape)
    path.parent.mkdir(parents=True, exist_ok=True)

    def convert(declared_version: str | None) -> str:
        with tempfile.TemporaryDirectory(prefix="streamscore-pmml-") as tmp:
            pkl = Path(tmp, "estimator.pkl")
            original = sklearn.base.__version__
            try:
                if declared_version:
                    sklearn.base.__version__ = declared_version
                joblib.dump(pipeline, pkl)
            finally:
                sklearn.base.__version__ = original
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    sklearn2pmml(str(pkl), str(path), escape_func=None, java_opts=list(NO_TELEMETRY_JAVA_OPTS))
            except RuntimeError as exc:
                return out.getvalue() or str(exc)
            return ""

    declared = _DECLARED_SKLEARN_VERSION.get(sklearn.__version__) if allow_patch_version_mismatch else None
    if declared:
        warnings.warn(f"sklearn2pmml supports scikit-learn {declared}; converting a {sklearn.__version__} model "
                      f"as {declared} (same minor version: patch releases only fix bugs)", stacklevel=2)
    failure = convert(declared)
    if failure and not declared:
        m = re.search(r"Scikit-Learn version '([\d.]+)' is not supported.*?version '([\d.]+)'", failure, re.S)
        if m and allow_patch_version_mismatch and m.group(1).split(".")[:2] == m.group(2).split(".")[:2]:
            warnings.warn(f"sklearn2pmml supports scikit-learn {m.group(2)}; converting a {m.group(1)} model "
                          f"as {m.group(2)} (same minor version: patch releases only fix bugs)", stacklevel=2)
            failure = convert(m.group(2))
            if not failure:
                _DECLARED_SKLEARN_VERSION[m.group(1)] = m.group(2)  # skip the failing first try next time
        if failure:
            raise PmmlExportError("sklearn2pmml failed to convert the estimator:\n" + _java_error(failure))
    _stamp_pmml_header(path, name or path.stem, str(version))
    return path


def _java_error(output: str) -> str:
    keep = [line for line in output.splitlines()
            if line.strip() and not line.lstrip().startswith("at ") and "Standard output" not in line]
    return "\n".join(keep[:40])


def _stamp_pmml_header(path: Path, name: str, version: str) -> None:
    """Record the model's name and version in the PMML Header, with the element tree untouched."""
    import re

    text = path.read_text(encoding="utf-8")
    stamp = (f'<Extension name="streamscore.name" value="{_xml_attr(name)}"/>'
             f'<Extension name="streamscore.version" value="{_xml_attr(version)}"/>')
    new, n = re.subn(r"(<Header\b[^>]*?)(/>|>)",
                     lambda m: (m.group(1) + ">" + stamp + "</Header>") if m.group(2) == "/>" else (m.group(0) + stamp),
                     text, count=1)
    if n:
        path.write_text(new, encoding="utf-8")


def _xml_attr(value: str) -> str:
    return (value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;"))

"""scikit-learn models: ``.skops`` (no pickle) and, only with explicit trust, ``.joblib``/``.pkl``.

skops: every type the file would instantiate is listed before loading
(``skops.io.get_untrusted_types``); beyond skops' own trusted set, only the scikit-learn internals
in :data:`SKOPS_SAFE_TYPES` (tree structures without code) are accepted, and anything else must be
named by the caller in ``trusted_types`` or the load is refused with the list.

pickle/joblib: pickle runs code while loading, so a file is opened only when the caller passes
``trust_pickle=True`` *and* the file's sha256, which must match the bytes on disk. The digest does
not make pickle safe: it pins the file to the one the caller vetted.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from model_formats.base import (
    Batch, FieldSpec, ModelBase, ModelLoadError, ModelSchema, as_record_batch, classifier_outputs, column_of,
    empty_outputs, feature_matrix, output_fields, regressor_outputs,
)

# scikit-learn internals that skops does not trust by default but that hold only arrays.
SKOPS_SAFE_TYPES = frozenset({
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.LogLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    # a dtype descriptor (what OneHotEncoder/SimpleImputer record as ``dtype``): skops rebuilds it
    # from its string form with numpy.dtype(...), which runs no code of the file's choosing
    "numpy.dtype",
})
SKOPS_META_MEMBER = "streamscore.json"


def load_skops(path: Path, *, trusted_types: list[str] | None = None, name: str | None = None,
               version: str | None = None, feature_names: list[str] | None = None) -> "SklearnModel":
    try:
        import skops.io as sio
    except ImportError as exc:
        raise ModelLoadError(f"{path.name}: .skops models need skops (pip install skops): {exc}") from exc
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # truncated zip, missing schema.json, bad JSON
        raise ModelLoadError(f"{path.name}: not a readable skops file ({type(exc).__name__}: {exc})") from exc
    allowed = set(SKOPS_SAFE_TYPES) | set(trusted_types or ())
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        flags = " ".join(f"--trusted-type {t}" for t in refused)
        raise ModelLoadError(f"{path.name}: skops file would instantiate types that are not trusted: {refused}; "
                             f"refused. Review them, then trust them: CLI {flags} (Python: "
                             f"load_model(..., trusted_types={refused!r}))")
    try:
        estimator = sio.load(path, trusted=sorted(t for t in untrusted))
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: skops could not load the model ({type(exc).__name__}: {exc})") from exc
    meta = {}
    try:
        with zipfile.ZipFile(path) as zf:
            if SKOPS_META_MEMBER in zf.namelist():
                meta = json.loads(zf.read(SKOPS_META_MEMBER))
    except Exception:
        meta = {}
    return SklearnModel(estimator, path=path, name=name or meta.get("name"), version=version or meta.get("version"),
                        feature_names=feature_names or meta.get("feature_names"), metadata={"loader": "skops", **_str_meta(meta)})


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_pickle(path: Path, *, trust_pickle: bool = False, sha256: str | None = None, name: str | None = None,
                version: str | None = None, feature_names: list[str] | None = None) -> "SklearnModel":
    if not trust_pickle:
        raise ModelLoadError(f"{path.name}: pickle/joblib files run code while loading; refused. Convert the model "
                             "to .skops or .onnx (streamscore models export), or pass trust_pickle=True with the "
                             "file's sha256 if you vetted it")
    if not sha256:
        raise ModelLoadError(f"{path.name}: trust_pickle=True also needs the sha256 of the file you vetted")
    expected = sha256.lower().removeprefix("sha256:").strip()
    actual = sha256_of(path)
    if not hmac.compare_digest(expected, actual):
        raise ModelLoadError(f"{path.name}: sha256 mismatch (expected {expected}, file has {actual}); refused")
    try:
        import joblib

        estimator = joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: could not unpickle the model ({type(exc).__name__}: {exc})") from exc
    if not hasattr(estimator, "predict"):
        raise ModelLoadError(f"{path.name}: unpickled a {type(estimator).__name__}, not an estimator")
    return SklearnModel(estimator, path=path, name=name, version=version, feature_names=feature_names,
                        metadata={"loader": "pickle", "sha256": actual})


def _str_meta(meta: dict) -> dict:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


class SklearnModel(ModelBase):
    format = "sklearn"

    def __init__(self, estimator, *, path: Path | str = "", name: str | None = None, version: str | None = None,
                 feature_names: list[str] | None = None, metadata: dict | None = None) -> None:
        from sklearn.base import is_classifier, is_regressor

        self.estimator = estimator
        self.path = str(path)
        stem = Path(path).stem if path else type(estimator).__name__
        self.name = name or stem
        self.version = str(version) if version else "0"
        final = getattr(estimator, "_final_estimator", estimator)
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("sklearn_estimator", type(final).__name__)
        try:
            import sklearn

            self.metadata["sklearn_version"] = sklearn.__version__
        except Exception:
            pass
        names = getattr(estimator, "feature_names_in_", None)
        if names is not None and feature_names and [str(n) for n in names] != [str(n) for n in feature_names]:
            raise ModelLoadError(f"{self.name}: the estimator was fitted on columns {[str(n) for n in names]}; "
                                 f"input_names {list(feature_names)} differ")
        names = [str(n) for n in names] if names is not None else (list(feature_names) if feature_names else None)
        self._text_1d = _starts_with_text_vectorizer(estimator)  # fitted on a 1-D sequence of documents
        if self._text_1d:
            names = names or ["text"]
            if len(names) != 1:
                raise ModelLoadError(f"{self.name}: a text pipeline takes one input column, not {names}")
        if names is None:
            n = getattr(estimator, "n_features_in_", None)
            if n is None:
                raise ModelLoadError(f"{self.name}: the estimator records no input features (not fitted?)")
            names = [f"x{i}" for i in range(int(n))]
        nan_ok = nan_handled_columns(estimator, names)
        categorical = _categorical_inputs(estimator)
        text = set(names) if self._text_1d else _text_inputs(estimator)
        fields = []
        for n in names:
            if n in text:
                fields.append(FieldSpec(n, "string"))  # free text: no domain
            elif n in categorical:
                fields.append(FieldSpec(n, "string", True, False, categorical[n]))
            else:
                fields.append(FieldSpec(n, "double", True, n in nan_ok))
        if is_classifier(estimator):
            self.task = "classification"
            self.classes = tuple(_plain(c) for c in final.classes_)
        elif is_regressor(estimator) or hasattr(estimator, "predict"):
            self.task = "regression"
        self.schema = ModelSchema(inputs=tuple(fields), outputs=output_fields(self.task, self.classes))
        self._frame = bool(categorical) or bool(text and not self._text_1d) or _wants_dataframe(estimator)
        self._named = getattr(estimator, "feature_names_in_", None) is not None

    def _X(self, rb: pa.RecordBatch):
        names = self.schema.input_names
        if self._text_1d:
            return np.asarray(column_of(rb, names[0]).to_pylist(), dtype=object)
        if self._frame:
            import pandas as pd

            return pd.DataFrame({n: column_of(rb, n).to_numpy(zero_copy_only=False)
                                 for n in names}, columns=names)
        return feature_matrix(rb, names, np.float64)

    def predict(self, batch: Batch) -> pa.RecordBatch:
        rb = as_record_batch(batch)
        if rb.num_rows == 0:
            return empty_outputs(self.schema)
        X = self._X(rb)
        with warnings.catch_warnings():
            # fitted on a DataFrame, scored on the same columns as a matrix, in the same order
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            if self.task == "classification":
                return classifier_outputs(self.estimator.predict_proba(X), self.classes)
            return regressor_outputs(self.estimator.predict(X))

    def close(self) -> None:
        pass


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _wants_dataframe(estimator) -> bool:
    steps = getattr(estimator, "steps", None)
    first = steps[0][1] if steps else estimator
    return type(first).__name__ == "ColumnTransformer"


def _categorical_inputs(estimator) -> dict[str, tuple | None]:
    """String columns routed to a OneHotEncoder/OrdinalEncoder in a leading ColumnTransformer:
    name -> domain (the fitted categories when unknown values raise, else None)."""
    steps = getattr(estimator, "steps", None)
    first = steps[0][1] if steps else estimator
    out: dict[str, tuple | None] = {}
    for _, trans, cols in getattr(first, "transformers_", []) or []:
        enc = trans
        if hasattr(trans, "steps"):
            enc = next((s for _, s in trans.steps if hasattr(s, "categories_")), None)
        if enc is None or not hasattr(enc, "categories_") or isinstance(cols, slice):
            continue
        cols = list(cols) if not isinstance(cols, str) else [cols]
        for col, cats in zip(cols, enc.categories_):
            if not isinstance(col, str) or np.asarray(cats).dtype.kind not in "OUS":
                continue
            strict = getattr(enc, "handle_unknown", "error") == "error"
            out[col] = tuple(str(c) for c in cats if c is not None and c == c) if strict else None
    return out


# --- which inputs may hold NaN: judged over the whole pipeline, not its last step --------------

_IMPUTERS = {"SimpleImputer", "IterativeImputer", "KNNImputer"}


def _nan_effect(step, onnx: bool) -> str:
    """'handles' (NaN gone after this step), 'passes' (NaN goes on) or 'fails' (NaN refused)."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return "passes"
    if isinstance(step, str) and step == "drop":
        return "handles"
    name = type(step).__name__
    if name in _IMPUTERS:
        missing = getattr(step, "missing_values", np.nan)
        return "handles" if isinstance(missing, float) and missing != missing else "fails"
    try:
        allow = bool(step.__sklearn_tags__().input_tags.allow_nan)
    except Exception:
        allow = False
    if not allow:
        return "fails"
    if hasattr(step, "predict"):
        # a final estimator that handles NaN itself; in ONNX only HistGradientBoosting's routing
        # survives the conversion (a RandomForest's does not: measured up to 0.97 apart)
        return "handles" if not onnx or name.startswith("HistGradientBoosting") else "fails"
    return "passes"


def _chain_handles_nan(steps: list, onnx: bool) -> bool:
    for step in steps:
        effect = _nan_effect(step, onnx)
        if effect != "passes":
            return effect == "handles"
    return True


def nan_handled_columns(estimator, names: list[str], *, onnx: bool = False) -> set[str]:
    """Input columns whose NaN the estimator handles, judged over the whole pipeline: a NaN is
    fine where an imputer (missing_values=NaN) removes it before any step that refuses NaN, or
    where every step lets it through to a final estimator that handles NaN. A leading
    ColumnTransformer is followed column by column. ``onnx``: as the ONNX export will score it."""
    steps = [s for _, s in getattr(estimator, "steps", [])] or [estimator]
    first, rest = steps[0], steps[1:]
    branches = getattr(first, "transformers_", None)
    if branches is None:
        return set(names) if _chain_handles_nan(steps, onnx) else set()
    ok: set[str] = set()
    for _, trans, cols in branches:
        if isinstance(cols, slice) or not len(np.atleast_1d(cols)):
            continue
        cols = [cols] if isinstance(cols, str) else list(cols)
        cols = [names[c] if isinstance(c, (int, np.integer)) and not isinstance(c, bool) else c for c in cols]
        inner = [s for _, s in getattr(trans, "steps", [])] or [trans]
        if _chain_handles_nan(inner + rest, onnx):
            ok |= {str(c) for c in cols}
    return ok


# --- text inputs -----------------------------------------------------------------------------

def is_text_vectorizer(step) -> bool:
    """CountVectorizer, TfidfVectorizer, HashingVectorizer (anything that builds an analyzer)."""
    return hasattr(step, "build_analyzer") and hasattr(step, "transform")


def _starts_with_text_vectorizer(estimator) -> bool:
    steps = getattr(estimator, "steps", None)
    return bool(steps) and is_text_vectorizer(steps[0][1])


def _text_inputs(estimator) -> set[str]:
    """Columns a leading ColumnTransformer sends, as one column of documents, to a text vectorizer."""
    steps = getattr(estimator, "steps", None)
    first = steps[0][1] if steps else estimator
    out: set[str] = set()
    for _, trans, cols in getattr(first, "transformers_", []) or []:
        inner = getattr(trans, "steps", None)
        head = inner[0][1] if inner else trans
        if is_text_vectorizer(head) and isinstance(cols, str):
            out.add(cols)
    return out

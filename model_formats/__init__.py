"""Model formats behind one scoring interface (see `model_formats.base`)."""
from model_formats.base import (  # noqa: F401
    LABEL, SCORE, FieldSpec, Model, ModelLoadError, ModelSchema, ValidationResult,
)

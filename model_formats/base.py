"""The one scoring interface every model format implements.

`model_formats` knows nothing of Flink, Beam or Kafka: it turns an Arrow RecordBatch of input
features into an Arrow RecordBatch of outputs, row-aligned, after validating the rows against the
schema read from the model file itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pyarrow as pa

# Output columns every model produces (classifiers and regressors alike).
SCORE = "score"   # binary classifier: P(positive class); multiclass: P(predicted class); regressor: value
LABEL = "label"   # predicted class (classifiers) or the value again (regressors)
PROBABILITY_PREFIX = "probability_"  # one column per class for classifiers: probability_<class>

Batch = pa.RecordBatch | Mapping[str, np.ndarray]


class ModelLoadError(Exception):
    """A model file is missing, corrupt, hostile or of an unsupported format."""


@dataclass(frozen=True)
class FieldSpec:
    """One input or output field of a model."""

    name: str
    dtype: str                      # "float" | "double" | "integer" | "string" | "boolean"
    required: bool = True
    allow_nan: bool = False
    allowed_values: tuple | None = None  # categorical domain, when the model declares one


@dataclass(frozen=True)
class ModelSchema:
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.inputs]


@dataclass
class ValidationResult:
    """A batch split into the rows that can be scored and the rows that cannot (with reasons)."""

    valid: pa.RecordBatch                 # the valid rows, input columns only, in input order
    valid_index: np.ndarray               # positions of the valid rows in the original batch
    rejected_index: np.ndarray            # positions of the rejected rows in the original batch
    reasons: list[str] = field(default_factory=list)  # one machine-readable reason per rejected row


@runtime_checkable
class Model(Protocol):
    """A loaded model, whatever its runtime."""

    name: str
    version: str
    format: str  # "onnx" | "pmml" | "sklearn"
    schema: ModelSchema

    def validate(self, batch: Batch) -> ValidationResult:
        """Split a batch into valid rows and rejected rows with a per-row reason."""

    def predict(self, batch: Batch) -> pa.RecordBatch:
        """Score already-valid rows; returns SCORE, LABEL (and probability_*) columns, row-aligned."""

    def close(self) -> None:
        """Release the runtime (sessions, JVMs)."""


def as_record_batch(batch: Batch) -> pa.RecordBatch:
    """Accept a RecordBatch or a dict of numpy columns."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    if isinstance(batch, pa.Table):
        return batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], schema=batch.schema)
    return pa.RecordBatch.from_pydict({k: np.asarray(v) for k, v in batch.items()})


def feature_matrix(batch: pa.RecordBatch, names: Sequence[str], dtype=np.float32) -> np.ndarray:
    """Stack the named columns into a 2-D C-contiguous matrix (rows × features)."""
    out = np.empty((batch.num_rows, len(names)), dtype=dtype)
    for j, name in enumerate(names):
        out[:, j] = batch.column(batch.schema.get_field_index(name)).to_numpy(zero_copy_only=False)
    return out

"""The one scoring interface every model format implements.

`model_formats` knows nothing of Flink, Beam or Kafka: it turns an Arrow RecordBatch of input
features into an Arrow RecordBatch of outputs, row-aligned, after validating the rows against the
schema read from the model file itself.
"""
from __future__ import annotations

import ctypes
import functools
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


def release_freed_heap() -> None:
    """Hand the memory a model load freed (parsed copies, unpickling temporaries) back to the OS.
    glibc keeps freed heap in its arenas, so without this a worker stays at its load peak: about
    twice a large forest's size (bench/large_model.py). A no-op where libc has no ``malloc_trim``."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class FieldSpec:
    """One input or output field of a model."""

    name: str
    dtype: str                      # "float" | "double" | "integer" | "string" | "boolean"
    required: bool = True
    allow_nan: bool = False
    allowed_values: tuple | None = None  # categorical domain, when the model declares one
    nullable: bool = False          # null values go to the model, which treats them (PMML missing values)


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
    """Stack the named columns into a 2-D C-contiguous matrix (rows × features).

    Raises ``ValueError`` when a name is absent from the batch (or present twice): scoring another
    column in its place would be silently wrong."""
    out = np.empty((batch.num_rows, len(names)), dtype=dtype)
    for j, name in enumerate(names):
        out[:, j] = column_of(batch, name).to_numpy(zero_copy_only=False)
    return out


def column_of(batch: pa.RecordBatch, name: str) -> pa.Array:
    """The column ``name`` of ``batch``; ``ValueError`` naming what is there when it is absent."""
    idx = batch.schema.get_field_index(name)
    if idx < 0:
        have = batch.schema.names
        why = "twice" if have.count(name) > 1 else "absent"
        raise ValueError(f"input column {name!r} is {why} in the batch (columns {have}); "
                         "predict() takes the rows validate() returns")
    return batch.column(idx)


# --------------------------------------------------------------------------------------------
# Shared implementation (every format subclasses ModelBase; validation lives in one place).
# --------------------------------------------------------------------------------------------

class ModelBase:
    """Common behaviour of the concrete models: shared validation, metadata, context manager.

    Subclasses set ``name``, ``version``, ``format``, ``schema``, ``path`` and ``metadata`` and
    implement ``predict`` (and ``close`` when they hold a runtime).
    """

    name: str
    version: str
    format: str
    schema: ModelSchema
    path: str = ""
    metadata: dict[str, str]
    task: str = "classification"            # "classification" | "regression"
    classes: tuple = ()                     # class labels, classifiers only

    def validate(self, batch: Batch) -> ValidationResult:
        from model_formats.validation import validate_batch

        return validate_batch(self.schema, batch)

    def validate_and_predict(self, batch: Batch) -> tuple[pa.RecordBatch, ValidationResult]:
        """Validate then predict the valid rows: (outputs aligned with ``result.valid_index``, result)."""
        result = self.validate(batch)
        return self.predict(result.valid), result

    @property
    def input_names(self) -> list[str]:
        return self.schema.input_names

    @property
    def output_names(self) -> list[str]:
        return [f.name for f in self.schema.outputs]

    def describe(self) -> dict:
        """Everything ``streamscore models inspect`` prints, as plain data."""
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "task": self.task,
            "path": self.path,
            "classes": [c.item() if hasattr(c, "item") else c for c in self.classes],
            "inputs": [_field_dict(f) for f in self.schema.inputs],
            "outputs": [_field_dict(f) for f in self.schema.outputs],
            "metadata": dict(self.metadata),
        }

    def close(self) -> None:  # pragma: no cover - overridden where a runtime is held
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} v{self.version} format={self.format} "
                f"inputs={len(self.schema.inputs)} task={self.task}>")


def _field_dict(f: FieldSpec) -> dict:
    d = {"name": f.name, "dtype": f.dtype, "required": f.required, "allow_nan": f.allow_nan,
         "nullable": f.nullable}
    if f.allowed_values is not None:
        d["allowed_values"] = list(f.allowed_values)
    return d


def output_fields(task: str, classes: Sequence = (), label_dtype: str | None = None,
                  probabilities: bool = True) -> tuple[FieldSpec, ...]:
    """The output schema every format shares: score, label and one probability_<class> per class
    (none for classifiers that give no probabilities)."""
    if task == "regression":
        return (FieldSpec(SCORE, "double"), FieldSpec(LABEL, "double"))
    if label_dtype is None:
        label_dtype = "string" if any(isinstance(c, str) for c in classes) else "integer"
    fields = [FieldSpec(SCORE, "double"), FieldSpec(LABEL, label_dtype)]
    if probabilities:
        fields += [FieldSpec(f"{PROBABILITY_PREFIX}{c}", "double") for c in classes]
    return tuple(fields)


def classifier_outputs(proba: np.ndarray, classes: Sequence, labels: np.ndarray | None = None) -> pa.RecordBatch:
    """Build the output batch of a classifier from its (rows × classes) probability matrix.

    ``labels``: the runtime's own predicted labels (kept as the runtime decided, so that label
    flips between runtimes stay visible); when absent, the arg-max class. Rows whose
    probabilities hold NaN (the runtime gave no answer) get a null label.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1:
        proba = proba.reshape(-1, 1)
    n = proba.shape[0]
    classes = tuple(classes)
    classes_arr = np.asarray(classes)
    columns = np.ascontiguousarray(proba.T)  # one contiguous buffer per class column
    mask = None
    if n and np.isnan(columns).any():
        mask = np.isnan(proba).any(axis=1)
    if labels is None:
        if n:
            scored = proba if mask is None else np.nan_to_num(proba, nan=-1.0)
            labels = classes_arr[np.argmax(scored, axis=1)]
        else:
            labels = classes_arr[:0]
    labels = np.asarray(labels).reshape(-1)
    if len(classes) == 2:
        score = columns[1]
    else:
        score = proba.max(axis=1) if n else np.empty(0)
    if classes_arr.dtype.kind in "OUS" or labels.dtype.kind in "OUS":
        label_col = pa.array([str(v) for v in labels], type=pa.string(), mask=mask)
    else:
        label_col = pa.array(labels.astype(np.int64, copy=False), type=pa.int64(), mask=mask)
    cols = [pa.array(score, type=pa.float64()), label_col]
    cols += [pa.array(columns[j], type=pa.float64()) for j in range(len(classes))]
    return pa.RecordBatch.from_arrays(cols, names=_output_names(classes))


@functools.lru_cache(maxsize=256)
def _output_names(classes: tuple) -> list[str]:
    return [SCORE, LABEL] + [f"{PROBABILITY_PREFIX}{c}" for c in classes]


def label_outputs(labels: Sequence, score: np.ndarray, label_dtype: str) -> pa.RecordBatch:
    """Output batch of a classifier that gives a label and no per-class probabilities: ``score``
    is what the model gives beside the label (e.g. a rule's confidence; NaN -> null where none)."""
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    if label_dtype == "string":
        label_col = pa.array([None if v is None else str(v) for v in labels], type=pa.string())
    else:
        label_col = pa.array([None if v is None else int(v) for v in labels], type=pa.int64())
    return pa.RecordBatch.from_arrays([pa.array(score, type=pa.float64(), from_pandas=True), label_col],
                                      names=[SCORE, LABEL])


def regressor_outputs(values: np.ndarray) -> pa.RecordBatch:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    col = pa.array(values, type=pa.float64())
    return pa.RecordBatch.from_arrays([col, col], names=[SCORE, LABEL])


def empty_outputs(schema: ModelSchema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=pa.schema(
        [(f.name, ARROW_TYPES[f.dtype]) for f in schema.outputs]))


ARROW_TYPES: dict[str, pa.DataType] = {
    "float": pa.float32(),
    "double": pa.float64(),
    "integer": pa.int64(),
    "string": pa.string(),
    "boolean": pa.bool_(),
}

"""One validation implementation shared by every model format.

The runtimes disagree on bad input, silently (onnxruntime scores NaN through a tree, pypmml
returns nulls or raises, scikit-learn raises for the whole batch). This layer decides instead:
each row is checked against the model's input schema, rows that fail are split off with a
machine-readable reason, and the valid rows come back as a RecordBatch holding exactly the input
columns, in input order, cast to the schema's types.

Reasons (several are joined with ``;`` when a row fails more than one check)::

    missing_field:<name>          the column is absent from the batch (required field)
    missing:<name>                the value is null (required field)
    wrong_type:<name>             the value cannot be read as the field's type (integers are read as
                                  text for string fields, booleans as 0/1 for numeric fields)
    nan:<name>                    NaN where the field does not allow it
    non_finite:<name>             +/-inf in a numeric field that does not allow NaN
    out_of_domain:<name>=<value>  a categorical value outside the declared domain
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_formats.base import ARROW_TYPES, Batch, FieldSpec, ModelSchema, ValidationResult

_NUMERIC = {"float", "double", "integer"}

# A check is (mask of failing rows, reason for row i).
Check = tuple[np.ndarray, Callable[[int], str]]


def validate_batch(schema: ModelSchema, batch: Batch) -> ValidationResult:
    n = _num_rows(batch)
    columns: list[pa.Array] = []
    checks: list[Check] = []
    for spec in schema.inputs:
        raw = _get_column(batch, spec.name)
        if raw is None:
            target = ARROW_TYPES.get(spec.dtype, pa.float64())
            columns.append(pa.nulls(n, type=target))
            if spec.required:
                checks.append((np.ones(n, dtype=bool), _const(f"missing_field:{spec.name}")))
            continue
        arr, field_checks = _check_column(spec, raw, n)
        columns.append(arr)
        checks.extend(field_checks)

    bad = np.zeros(n, dtype=bool)
    for mask, _ in checks:
        bad |= mask
    names = schema.input_names
    if not bad.any():
        valid = pa.RecordBatch.from_arrays(columns, names=names)
        return ValidationResult(valid=valid, valid_index=np.arange(n), rejected_index=np.empty(0, dtype=np.int64), reasons=[])

    rejected_index = np.flatnonzero(bad)
    valid_index = np.flatnonzero(~bad)
    reasons = []
    for i in rejected_index:
        reasons.append(";".join(reason(int(i)) for mask, reason in checks if mask[i]))
    take = pa.array(valid_index, type=pa.int64())
    valid = pa.RecordBatch.from_arrays([c.take(take) for c in columns], names=names)
    return ValidationResult(valid=valid, valid_index=valid_index, rejected_index=rejected_index, reasons=reasons)


# ------------------------------------------------------------------------------------------------

def _num_rows(batch: Batch) -> int:
    if isinstance(batch, (pa.RecordBatch, pa.Table)):
        return batch.num_rows
    lengths = {len(np.atleast_1d(v)) for v in batch.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of the batch have different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _get_column(batch: Batch, name: str):
    if isinstance(batch, pa.RecordBatch):
        idx = batch.schema.get_field_index(name)
        return batch.column(idx) if idx >= 0 else None
    if isinstance(batch, pa.Table):
        if name not in batch.column_names:
            return None
        return batch.column(name).combine_chunks()
    if isinstance(batch, Mapping):
        if name not in batch:
            return None
        return np.atleast_1d(np.asarray(batch[name]))
    raise TypeError(f"a batch is an Arrow RecordBatch or a dict of numpy columns, not {type(batch).__name__}")


def _const(text: str) -> Callable[[int], str]:
    return lambda i: text


def _check_column(spec: FieldSpec, raw, n: int) -> tuple[pa.Array, list[Check]]:
    """Convert one column to the field's Arrow type; return it with the failed checks."""
    target = ARROW_TYPES.get(spec.dtype)
    if target is None:
        raise ValueError(f"field {spec.name!r} has unsupported dtype {spec.dtype!r}")
    checks: list[Check] = []
    name = spec.name

    if isinstance(raw, pa.Array) and raw.type == target:
        arr, wrong = raw, None  # fast path: already the field's type
    else:
        arr, wrong = _convert(raw, spec, target)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if wrong is not None and not wrong.any():
        wrong = None
    if wrong is not None:
        checks.append((wrong, _const(f"wrong_type:{name}")))

    has_nulls = arr.null_count > 0
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if has_nulls else None
    if has_nulls and spec.allow_nan and spec.dtype in ("float", "double"):
        # Arrow null is NaN where the model handles NaN (pandas -> Arrow turns NaN into null)
        if wrong is not None:
            nulls = nulls & ~wrong
        arr = pc.if_else(pa.array(nulls), pa.scalar(float("nan"), type=target), arr)
        has_nulls = arr.null_count > 0
        nulls = arr.is_null().to_numpy(zero_copy_only=False) if has_nulls else None
    if has_nulls and spec.required and not spec.nullable:
        missing = nulls & ~wrong if wrong is not None else nulls  # unconvertible is wrong, not missing
        if missing.any():
            checks.append((missing, _const(f"missing:{name}")))

    if spec.dtype in ("float", "double") and not spec.allow_nan and len(arr):
        values = arr.to_numpy(zero_copy_only=False)
        if not np.isfinite(values).all():  # one pass in the common case; split NaN / inf only when needed
            nan = np.isnan(values)
            if has_nulls:
                nan &= ~nulls
            if nan.any():
                checks.append((nan, _const(f"nan:{name}")))
            inf = np.isinf(values)
            if inf.any():
                checks.append((inf, _const(f"non_finite:{name}")))

    if spec.allowed_values is not None and len(arr):
        domain = _domain_array(spec, target)
        inside = pc.is_in(arr, value_set=domain)
        outside = ~inside.fill_null(True).to_numpy(zero_copy_only=False) & ~_null_mask(arr)  # nulls: judged above
        if spec.allow_nan and spec.dtype in ("float", "double"):
            vals = arr.to_numpy(zero_copy_only=False)
            outside &= ~np.isnan(vals)
        if outside.any():
            values = arr
            checks.append((outside, lambda i, a=values: f"out_of_domain:{name}={_short(a[i].as_py())}"))
    return arr, checks


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _domain_array(spec: FieldSpec, target: pa.DataType) -> pa.Array:
    values = list(spec.allowed_values)
    if pa.types.is_string(target):
        return pa.array([str(v) for v in values], type=target)
    if pa.types.is_integer(target):
        return pa.array([int(float(v)) for v in values], type=target)
    if pa.types.is_floating(target):
        return pa.array([float(v) for v in values], type=target)
    return pa.array(values, type=target)


def _null_mask(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.zeros(len(arr), dtype=bool)
    return arr.is_null().to_numpy(zero_copy_only=False)


# ------------------------------------------------------------------------------------------------
# Conversion to the field's Arrow type. Returns (array of the target type, mask of rows whose value
# has the wrong type — those rows hold null in the returned array).

def _convert(raw, spec: FieldSpec, target: pa.DataType) -> tuple[pa.Array, np.ndarray | None]:
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind == "O" or raw.dtype.kind in "US" and spec.dtype != "string":
            return _convert_objects(list(raw), spec, target)
        if raw.dtype.kind == "M" or raw.dtype.kind == "m" or raw.dtype.kind == "V":
            return pa.nulls(len(raw), type=target), np.ones(len(raw), dtype=bool)
        try:
            raw = pa.array(raw, from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return _convert_objects(list(raw), spec, target)
    if pa.types.is_dictionary(raw.type):
        raw = raw.dictionary_decode()
    t = raw.type
    if pa.types.is_null(t):
        return pa.nulls(len(raw), type=target), None
    if spec.dtype in ("float", "double"):
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
            return raw.cast(target, safe=False), None
    elif spec.dtype == "integer":
        if pa.types.is_boolean(t):
            return raw.cast(target), None
        if pa.types.is_integer(t):
            try:
                return raw.cast(target), None
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # uint64 beyond int64
                return _convert_objects(raw.to_pylist(), spec, target)
        if pa.types.is_floating(t) or pa.types.is_decimal(t):
            values = raw.cast(pa.float64()).to_numpy(zero_copy_only=False)
            nulls = _null_mask(raw)
            with np.errstate(invalid="ignore"):
                finite = np.isfinite(values)
                integral = finite & (np.floor(values) == values) & (np.abs(values) < 2**63)
            # NaN becomes null (pandas' missing integer) and is judged as missing, not wrong type
            wrong = ~integral & ~nulls & ~np.isnan(values)
            out = np.where(integral, values, 0).astype(np.int64)
            return pa.array(out, type=target, mask=~integral), wrong
    elif spec.dtype == "string":
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t):
            return raw.cast(target), None  # integers compare as their decimal text (PMML does the same)
    elif spec.dtype == "boolean":
        if pa.types.is_boolean(t):
            return raw, None
        if pa.types.is_integer(t):
            return _convert_objects(raw.to_pylist(), spec, target)
    # Strings for a numeric field (JSON events often carry "1.5"), or any other mismatch:
    # decide value by value.
    return _convert_objects(raw.to_pylist(), spec, target)


def _convert_objects(values: list, spec: FieldSpec, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    out = []
    wrong = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(_coerce_scalar(v, spec.dtype))
        except (TypeError, ValueError, OverflowError):
            wrong[i] = True
            out.append(None)
    return pa.array(out, type=target), wrong


def _coerce_scalar(v, dtype: str):
    if isinstance(v, np.generic):
        v = v.item()
    if dtype in ("float", "double"):
        if isinstance(v, (int, float)):  # booleans are 0/1, as scikit-learn reads them
            return float(v)
        if isinstance(v, (str, bytes)):
            return float(v.strip())
        raise TypeError(type(v).__name__)
    if dtype == "integer":
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, int):
            if not -(2**63) <= v < 2**63:
                raise OverflowError(v)
            return v
        if isinstance(v, float):
            if math.isnan(v):
                return None  # NaN is how pandas spells a missing integer: judged as missing
            if v.is_integer():
                return int(v)
            raise ValueError("not integral")
        if isinstance(v, (str, bytes)):
            return int(v.strip())
        raise TypeError(type(v).__name__)
    if dtype == "string":
        if isinstance(v, str):
            return v
        if isinstance(v, bool):
            raise TypeError("boolean for a string field")
        if isinstance(v, int):
            return str(v)  # categories compare as text: 4 is the category "4" (PMML does the same)
        if isinstance(v, float) and v.is_integer():
            return str(int(v))  # 4.0: an integer column that held a missing value (pandas)
        raise TypeError(type(v).__name__)
    if dtype == "boolean":
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise TypeError(type(v).__name__)
    raise TypeError(dtype)

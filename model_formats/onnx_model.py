"""ONNX models scored with onnxruntime.

Schema: the model's graph inputs, plus ``metadata_props`` written at export
(:func:`model_formats.export.export_onnx`):

    feature_names  JSON list (or comma-separated) naming the columns of a single 2-D input
    categories     JSON {input: [values]}: the domain of categorical (string) inputs
    name, version  the model's identity
    task           "classification" | "regression"
    classes        JSON list of class labels (classifiers)
    allow_nan      JSON list of feature names whose NaN the model handles itself

Files from other exporters need none of it: input names come from ``input_names=`` (load option,
config ``model.input_names``) or default to ``x0..xn``; classes from the graph; a classifier whose
probabilities are a ZipMap (``seq(map(...))``, skl2onnx's and onnxmltools' default) is scored from
the probability tensor the ZipMap reads, cut out of the graph at load time (so float64 ZipMap
exports that onnxruntime refuses load too); tree ensembles that route missing values themselves
(``nodes_missing_value_tracks_true`` set: HistGradientBoosting, LightGBM, XGBoost exports) accept
NaN (and Arrow null) on every input.

Graphs with one input per feature (``[N, 1]`` tensors, e.g. pipelines with string categoricals)
are read input by input. Safety: the protobuf is parsed first without external data; every
external-data reference must resolve (symlinks followed) to a file inside the model's folder,
within that file's size, before onnxruntime is handed the path.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from model_formats.base import (
    Batch, FieldSpec, ModelBase, ModelLoadError, ModelSchema, as_record_batch, classifier_outputs, column_of,
    empty_outputs, feature_matrix, output_fields, regressor_outputs,
)

_ELEM_TO_DTYPE = {  # onnx.TensorProto element types
    1: "float", 11: "double", 10: "float",           # FLOAT, DOUBLE, FLOAT16
    6: "integer", 7: "integer", 5: "integer", 12: "integer", 13: "integer",  # INT32, INT64, INT16, UINT32, UINT64
    2: "integer", 3: "integer", 4: "integer",       # UINT8, INT8, UINT16
    8: "string", 9: "boolean",
}
_NUMPY_OF = {"float": np.float32, "double": np.float64, "integer": np.int64, "boolean": np.bool_, "string": object}


class OnnxModel(ModelBase):
    format = "onnx"

    def __init__(self, path: str | os.PathLike, *, intra_op_num_threads: int | None = 1,
                 inter_op_num_threads: int | None = 1, name: str | None = None,
                 version: str | None = None, input_names: list[str] | None = None) -> None:
        import onnx
        import onnxruntime as ort

        self.path = str(path)
        p = Path(path)
        try:
            proto = onnx.load(str(p), load_external_data=False)
        except Exception as exc:  # DecodeError, truncated or not a protobuf at all
            raise ModelLoadError(f"{p.name}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
        if not proto.graph.node and not proto.graph.output:
            raise ModelLoadError(f"{p.name}: not a readable ONNX model (empty graph: truncated or not ONNX)")
        _check_external_data(proto, p)

        self.metadata = {prop.key: prop.value for prop in proto.metadata_props}
        self.metadata.setdefault("producer", f"{proto.producer_name} {proto.producer_version}".strip())
        self.name = name or self.metadata.get("name") or proto.graph.name or p.stem
        self.version = version or self.metadata.get("version") or (str(proto.model_version) if proto.model_version else "0")

        opts = ort.SessionOptions()
        if intra_op_num_threads is not None:
            opts.intra_op_num_threads = int(intra_op_num_threads)
        if inter_op_num_threads is not None:
            opts.inter_op_num_threads = int(inter_op_num_threads)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self._zipmap_labels = _cut_zipmaps(proto)  # {probability tensor: class labels}
        source: str | bytes = str(p)
        if self._zipmap_labels:
            self.metadata["zipmap"] = "cut at load: scored from the probability tensor it reads"
            if _has_external_data(proto):
                onnx.load_external_data_for_model(proto, str(p.resolve().parent))  # paths checked above
            source = proto.SerializeToString()
        # what the schema needs from the graph, taken before the parsed copy is dropped: onnxruntime
        # builds its own, and a large tree ensemble's parsed copy is as big as the file again
        graph = _GraphFacts(trees_route_missing_values=_trees_route_missing_values(proto),
                            classes=_classes_from_graph(proto))
        del proto
        try:
            self._session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            if "locale" in str(exc):
                raise ModelLoadError(f"{p.name}: the graph's StringNormalizer (text lower-casing) names a locale this "
                                     "machine does not have; install it (Debian: locales, locale-gen) or re-export "
                                     "with `streamscore models export` (locale C.UTF-8)") from exc
            raise ModelLoadError(f"{p.name}: onnxruntime refused the model: {exc}. If it was exported from "
                                 "scikit-learn, `streamscore models export` writes a file onnxruntime scores "
                                 "(float inputs, probability tensor, schema in metadata)") from exc

        del source
        self._build_schema(graph, input_names)

    # -- schema -----------------------------------------------------------------------------

    def _build_schema(self, graph: "_GraphFacts", input_names: list[str] | None) -> None:
        inputs = self._session.get_inputs()
        allow_nan = set(_json_list(self.metadata.get("allow_nan", "")) or [])
        nan_everywhere = "allow_nan" not in self.metadata and graph.trees_route_missing_values
        if nan_everywhere:
            self.metadata["allow_nan_from"] = "tree ensemble routes missing values (nodes_missing_value_tracks_true)"
        feature_names = _json_list(self.metadata.get("feature_names", ""))
        if input_names is not None:
            input_names = [str(n) for n in input_names]
            if len(set(input_names)) != len(input_names):
                raise ModelLoadError(f"{self.name}: input_names has duplicates: {input_names}")
        if len(inputs) == 1 and (feature_names is not None or _width(inputs[0]) != 1):
            inp = inputs[0]
            width = _width(inp)
            if input_names is not None:
                feature_names = input_names
            if feature_names is None:
                if width is None:
                    raise ModelLoadError(
                        f"{self.name}: input {inp.name!r} has no fixed width and no feature_names metadata; "
                        "re-export with streamscore models export (or add metadata_props feature_names)")
                feature_names = [f"x{i}" for i in range(width)]
            if width is not None and width != len(feature_names):
                raise ModelLoadError(f"{self.name}: feature_names lists {len(feature_names)} names, input {inp.name!r} is {width} wide")
            dtype = _elem_dtype(inp.type)
            self._mode = "matrix"
            self._matrix_input = inp.name
            self._matrix_dtype = _NUMPY_OF.get(dtype, np.float32)
            nan_ok = nan_everywhere and dtype in ("float", "double")
            fields = tuple(FieldSpec(n, dtype, True, nan_ok or n in allow_nan) for n in feature_names)
        else:
            if input_names is not None and list(input_names) != [i.name for i in inputs]:
                raise ModelLoadError(f"{self.name}: input_names {input_names} do not match the graph's inputs "
                                     f"{[i.name for i in inputs]} (one input per column: their names are the "
                                     "column names)")
            self._mode = "columns"
            fields = []
            try:
                categories = json.loads(self.metadata.get("categories") or "{}")
            except ValueError:
                categories = {}
            for inp in inputs:
                w = _width(inp)
                if w not in (1, None) and len(inp.shape) > 1:
                    raise ModelLoadError(f"{self.name}: input {inp.name!r} is {w} wide; only one 2-D input or [N,1] inputs are supported")
                domain = categories.get(inp.name)
                dtype = _elem_dtype(inp.type)
                nan_ok = nan_everywhere and dtype in ("float", "double")
                fields.append(FieldSpec(inp.name, dtype, True, nan_ok or inp.name in allow_nan,
                                        tuple(domain) if domain else None))
            fields = tuple(fields)
            self._column_inputs = [(f.name, f.dtype, len(inp.shape)) for f, inp in zip(fields, inputs)]

        outputs = self._session.get_outputs()
        self._output_names = [o.name for o in outputs]
        task = self.metadata.get("task")
        if task not in ("classification", "regression"):
            task = "classification" if len(outputs) >= 2 else "regression"
        self.task = task
        if task == "classification":
            tensors = [o for o in outputs if o.type.startswith("tensor(")]
            others = [o for o in outputs if not o.type.startswith("tensor(")]
            if others:
                raise ModelLoadError(f"{self.name}: outputs {[(o.name, o.type) for o in others]} are not tensors "
                                     "and are not a ZipMap's; re-export with a probability tensor "
                                     "(skl2onnx: options zipmap=False, or `streamscore models export`)")
            label_out = next((o for o in tensors if "label" in o.name.lower()), tensors[0])
            prob_out = next((o for o in tensors if o is not label_out and o.name in self._zipmap_labels), None) \
                or next((o for o in tensors if o is not label_out and "prob" in o.name.lower()), None) \
                or next((o for o in tensors if o is not label_out and "float" in o.type or "double" in o.type), None)
            if prob_out is None:
                raise ModelLoadError(f"{self.name}: classifier without a probability tensor output "
                                     f"(outputs {[(o.name, o.type) for o in outputs]})")
            self._output_names = [label_out.name, prob_out.name]  # only what predict reads
            self._label_idx, self._prob_idx = 0, 1
            classes = (_json_list(self.metadata.get("classes", "")) or self._zipmap_labels.get(prob_out.name)
                       or graph.classes)
            if classes is None:
                w = prob_out.shape[-1] if prob_out.shape and isinstance(prob_out.shape[-1], int) else None
                if w is None:
                    raise ModelLoadError(f"{self.name}: cannot tell the classes; add metadata_props 'classes'")
                classes = list(range(w))
            self.classes = tuple(classes)
            label_dtype = "string" if "string" in label_out.type else "integer"
        else:
            value_out = next((o for o in outputs if o.type.startswith("tensor(")), None)
            if value_out is None:
                raise ModelLoadError(f"{self.name}: regressor without a tensor output "
                                     f"(outputs {[(o.name, o.type) for o in outputs]})")
            self._output_names = [value_out.name]
            self._value_idx = 0
            label_dtype = None
        self.schema = ModelSchema(inputs=fields, outputs=output_fields(task, self.classes, label_dtype))

    # -- scoring ----------------------------------------------------------------------------

    def _feeds(self, rb: pa.RecordBatch) -> dict[str, np.ndarray]:
        if self._mode == "matrix":
            if self._matrix_dtype is object:  # string tensor (text, categories): one column per input name
                return {self._matrix_input: np.column_stack([np.asarray(column_of(rb, n).to_pylist(), dtype=object)
                                                             for n in self.schema.input_names])}
            return {self._matrix_input: feature_matrix(rb, self.schema.input_names, self._matrix_dtype)}
        feeds = {}
        for name, dtype, rank in self._column_inputs:
            col = column_of(rb, name)
            if dtype == "string":
                values = np.array(col.to_pylist(), dtype=object)
            else:
                values = col.to_numpy(zero_copy_only=False).astype(_NUMPY_OF[dtype], copy=False)
            feeds[name] = values.reshape(-1, 1) if rank == 2 else values
        return feeds

    def predict(self, batch: Batch) -> pa.RecordBatch:
        rb = as_record_batch(batch)
        if rb.num_rows == 0:
            return empty_outputs(self.schema)
        feeds = self._feeds(rb)  # ValueError when the batch lacks the model's columns
        try:
            results = self._session.run(self._output_names, feeds)
        except Exception as exc:
            raise RuntimeError(f"{self.name}: onnxruntime failed on a batch of {rb.num_rows} rows: {exc}") from exc
        if self.task == "regression":
            return regressor_outputs(results[self._value_idx])
        proba = results[self._prob_idx]
        labels = results[self._label_idx]
        return classifier_outputs(proba, self.classes, labels)

    def close(self) -> None:
        self._session = None


# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _GraphFacts:
    """What the schema is built from besides the session's inputs and outputs."""
    trees_route_missing_values: bool
    classes: list | None


def _cut_zipmaps(proto) -> dict[str, list]:
    """Replace every graph output produced by a ZipMap with the probability tensor the ZipMap
    reads (same column order: the ZipMap's class labels). Returns {tensor name: labels}."""
    import onnx
    from onnx import helper

    outputs = {o.name for o in proto.graph.output}
    zipmaps = [n for n in proto.graph.node if n.op_type == "ZipMap" and n.output[0] in outputs]
    if not zipmaps:
        return {}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
        types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    except Exception:
        types = {}
    cut: dict[str, list] = {}
    for node in zipmaps:
        labels = None
        for attr in node.attribute:
            if attr.name == "classlabels_int64s":
                labels = [int(v) for v in attr.ints]
            elif attr.name == "classlabels_strings":
                labels = [v.decode() for v in attr.strings]
        tensor = node.input[0]
        position = next(i for i, o in enumerate(proto.graph.output) if o.name == node.output[0])
        elem = types.get(tensor) or onnx.TensorProto.FLOAT
        del proto.graph.output[position]
        if tensor not in {o.name for o in proto.graph.output}:
            proto.graph.output.insert(position, helper.make_tensor_value_info(
                tensor, elem, [None, len(labels)] if labels else None))
        proto.graph.node.remove(node)
        cut[tensor] = labels
    return cut


def _has_external_data(proto) -> bool:
    from onnx.external_data_helper import _get_all_tensors

    return any(t.data_location == 1 for t in _get_all_tensors(proto))


def _trees_route_missing_values(proto) -> bool:
    """Whether the graph's tree ensembles send missing values down a learnt branch (the exporter
    wrote ``nodes_missing_value_tracks_true``): HistGradientBoosting, LightGBM and XGBoost exports
    do; onnxruntime then scores NaN as the native model does."""
    found = False
    for node in proto.graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            tracks = next((a for a in node.attribute if a.name == "nodes_missing_value_tracks_true"), None)
            if tracks is None or not any(tracks.ints):
                return False
            found = True
    return found


def _width(inp) -> int | None:
    shape = inp.shape
    if len(shape) >= 2 and isinstance(shape[-1], int):
        return shape[-1]
    if len(shape) == 1:
        return 1
    return None


def _elem_dtype(type_str: str) -> str:
    t = type_str.replace("tensor(", "").rstrip(")")
    return {"float": "float", "double": "double", "float16": "float", "string": "string", "bool": "boolean"}.get(
        t, "integer" if "int" in t else "float")


def _json_list(text: str) -> list | None:
    if not text:
        return None
    try:
        value = json.loads(text)
        if isinstance(value, list):
            return value
    except ValueError:
        pass
    return [s.strip() for s in text.split(",") if s.strip()]


def _classes_from_graph(proto) -> list | None:
    import onnx

    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name in ("classlabels_int64s", "classlabels_ints"):
                return list(onnx.helper.get_attribute_value(attr))
            if attr.name == "classlabels_strings":
                return [b.decode() for b in onnx.helper.get_attribute_value(attr)]
    return None


def _check_external_data(proto, model_path: Path) -> None:
    """Refuse external-data references that leave the model's folder or overrun their file."""
    from onnx.external_data_helper import _get_all_tensors

    base = model_path.resolve().parent
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or location.startswith(("\\", "/")) or ":" in location:
            raise ModelLoadError(f"{model_path.name}: tensor {tensor.name!r} has external data at {location!r}: "
                                 "only relative paths inside the model's folder are allowed")
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ModelLoadError(f"{model_path.name}: tensor {tensor.name!r} has external data outside the "
                                 f"model's folder ({location!r}); refused")
        if not target.is_file():
            raise ModelLoadError(f"{model_path.name}: external data file {location!r} of tensor {tensor.name!r} is missing")
        size = target.stat().st_size
        offset = int(info.get("offset", 0) or 0)
        length = int(info.get("length", 0) or 0)
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelLoadError(f"{model_path.name}: external data of tensor {tensor.name!r} overruns {location!r} "
                                 f"(offset {offset} + length {length} > {size} bytes)")

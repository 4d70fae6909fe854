"""PMML models scored with pypmml's engine (PMML4S on a JVM, reached through py4j).

Safety: the file is read once, parsed with ``defusedxml`` refusing any DTD, entity declaration
or external reference (pypmml resolves XML external entities: a crafted file can read local files
into its predictions), and those same bytes — not the path — are what the JVM parses.

Speed: one JSON string per batch in pmml4s' "split" layout (``{"columns": [...], "data": [[...]]}``).
pypmml's dict path costs one JVM round trip per field (4-8 ms per event) and its DataFrame path
goes through ``DataFrame.to_json`` which rounds inputs to 10 decimals; this path sends every double
as its shortest round-trip repr (exact) in one round trip.

JVM: one per process, started on the first PMML load and stopped (gateway shut down *and* the
java process terminated — the py4j JVM outlives ``gateway.shutdown()``) when the last PMML model is
closed, or at interpreter exit.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_formats.base import (
    LABEL, SCORE, Batch, FieldSpec, ModelBase, ModelLoadError, ModelSchema, ValidationResult, as_record_batch,
    classifier_outputs, column_of, empty_outputs, label_outputs, output_fields, regressor_outputs,
)

_MODEL_ELEMENTS = {
    "AssociationModel", "AnomalyDetectionModel", "BayesianNetworkModel", "BaselineModel",
    "ClusteringModel", "GaussianProcessModel", "GeneralRegressionModel", "MiningModel",
    "NaiveBayesModel", "NearestNeighborModel", "NeuralNetwork", "RegressionModel", "RuleSetModel",
    "SequenceModel", "Scorecard", "SupportVectorMachineModel", "TextModel", "TimeSeriesModel",
    "TreeModel",
}
# models whose engine-default "probability" columns are 0/1 indicators: probabilities only where declared
_NO_PROBABILITIES = {"SupportVectorMachineModel"}
_DTYPES = {"double": "double", "float": "float", "integer": "integer", "string": "string", "boolean": "boolean"}


# --- the JVM ----------------------------------------------------------------------------------

def find_java() -> str | None:
    """The ``java`` executable: ``$JAVA_HOME/bin/java`` when it exists, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").exists():
        return str(Path(java_home, "bin", "java"))
    return shutil.which("java")


class PmmlRuntime:
    """The process-wide PMML4S JVM (py4j). Reference-counted by the open PmmlModels."""

    _lock = threading.RLock()
    _gateway = None
    _proc = None
    _refs = 0
    _holds = 0

    @classmethod
    def acquire(cls):
        with cls._lock:
            if cls._gateway is None:
                cls._start()
            cls._refs += 1
            return cls._gateway

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._refs = max(0, cls._refs - 1)
            if cls._refs == 0:
                cls.shutdown()

    @classmethod
    def pid(cls) -> int | None:
        return cls._proc.pid if cls._proc is not None else None

    @classmethod
    def _start(cls) -> None:
        try:
            import pypmml
            from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
        except ImportError as exc:
            raise ModelLoadError(f"PMML scoring needs pypmml: pip install pypmml ({exc})") from exc
        java = find_java()
        if not java:
            raise ModelLoadError("PMML scoring needs a Java runtime (java on PATH or JAVA_HOME)")
        jars = os.environ.get("PYPMML_JARS_DIR") or str(Path(pypmml.__file__).parent / "jars")
        opts = os.environ.get("STREAMSCORE_PMML_JAVA_OPTS", "-Xss4m -XX:+UseSerialGC").split()
        try:
            port, proc = launch_gateway(classpath=os.path.join(jars, "*"), javaopts=opts, java_path=java,
                                        die_on_exit=True, return_proc=True)
        except Exception as exc:
            raise ModelLoadError(f"could not start the PMML JVM ({java} {' '.join(opts)}): {exc}") from exc
        cls._proc = proc
        cls._gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port, auto_convert=False))

    @classmethod
    def shutdown(cls) -> None:
        with cls._lock:
            gateway, proc = cls._gateway, cls._proc
            cls._gateway = cls._proc = None
            cls._refs = 0
            if gateway is not None:
                try:
                    gateway.shutdown()
                except Exception:
                    pass
            if proc is not None and proc.poll() is None:
                try:
                    if proc.stdin:
                        proc.stdin.close()  # die_on_exit: the JVM exits when its stdin closes
                    proc.wait(timeout=5)
                except Exception:
                    proc.terminate()
                    try:
                        proc.wait(timeout=5)
                    except Exception:
                        proc.kill()
                        proc.wait()


atexit.register(PmmlRuntime.shutdown)


# --- parsing the PMML document safely ---------------------------------------------------------

def read_pmml_safely(path: Path) -> tuple[bytes, object]:
    """Read the file once and parse it refusing DTDs, entities and external references."""
    try:
        import defusedxml
        from defusedxml import ElementTree as DET
    except ImportError as exc:  # never fall back to an unguarded parser
        raise ModelLoadError(f"PMML loading needs defusedxml (pip install defusedxml): {exc}") from exc
    data = path.read_bytes()
    try:
        root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden as exc:
        raise ModelLoadError(f"{path.name}: PMML with a DTD (<!DOCTYPE>) is refused: DTDs can declare "
                             f"external entities that read local files ({exc})") from exc
    except defusedxml.EntitiesForbidden as exc:
        raise ModelLoadError(f"{path.name}: PMML declaring XML entities is refused ({exc})") from exc
    except defusedxml.ExternalReferenceForbidden as exc:
        raise ModelLoadError(f"{path.name}: PMML with an external reference is refused ({exc})") from exc
    except defusedxml.DefusedXmlException as exc:
        raise ModelLoadError(f"{path.name}: PMML refused by the XML guard ({exc})") from exc
    except Exception as exc:  # ParseError: truncated or not XML
        raise ModelLoadError(f"{path.name}: not well-formed XML (truncated?): {exc}") from exc
    if _local(root.tag) != "PMML":
        raise ModelLoadError(f"{path.name}: XML root is <{_local(root.tag)}>, not <PMML>")
    return data, root


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(elem, name: str):
    return next((c for c in elem if _local(c.tag) == name), None)


def _children(elem, name: str):
    return [c for c in elem if _local(c.tag) == name]


class _PmmlDoc:
    """What the scoring layer needs from the document: identity, inputs, target, outputs."""

    def __init__(self, root, path: Path) -> None:
        self.header = _child(root, "Header")
        self.model = next((c for c in root if _local(c.tag) in _MODEL_ELEMENTS), None)
        if self.model is None:
            raise ModelLoadError(f"{path.name}: PMML without a model element")
        self.function = self.model.get("functionName", "")
        ext = {}
        if self.header is not None:
            for e in _children(self.header, "Extension"):
                if e.get("name"):
                    ext[e.get("name")] = e.get("value", "")
        self.extensions = ext
        dictionary = _child(root, "DataDictionary")
        if dictionary is None:
            raise ModelLoadError(f"{path.name}: PMML without a DataDictionary")
        self.data_fields = {f.get("name"): f for f in _children(dictionary, "DataField")}
        mining = _child(self.model, "MiningSchema")
        if mining is None:
            raise ModelLoadError(f"{path.name}: PMML model without a MiningSchema")
        self.inputs: list[FieldSpec] = []
        self.treated_as_missing: dict[str, tuple] = {}
        null_prediction_fields = _null_prediction_fields(self.model)
        self.target: str | None = None
        for mf in _children(mining, "MiningField"):
            name = mf.get("name")
            usage = mf.get("usageType", "active")
            if usage in ("target", "predicted"):
                self.target = self.target or name
                continue
            if usage not in ("active",):
                continue
            df = self.data_fields.get(name)
            if df is None:
                raise ModelLoadError(f"{path.name}: MiningField {name!r} is not in the DataDictionary")
            dtype = _DTYPES.get(df.get("dataType", "double"), "string")
            optype = df.get("optype", "continuous")
            replaced = mf.get("missingValueReplacement") is not None
            allowed = None
            invalid_treatment = mf.get("invalidValueTreatment", "returnInvalid")
            values = [v.get("value") for v in _children(df, "Value") if v.get("property", "valid") == "valid"]
            if optype in ("categorical", "ordinal") and invalid_treatment == "returnInvalid":
                if values:
                    allowed = tuple(values)
            elif optype in ("categorical", "ordinal") and values:
                self.treated_as_missing[name] = tuple(values)  # asMissing/asIs: the engine decides
            # Every PMML model defines what a missing input does (replacement, tree strategies, naive
            # Bayes skipping the field, ...): nulls go to the engine; rows it gives no result for are
            # rejected in validate(). NaN is a missing value in PMML.
            # PMML4S scores such rows where TreeModel@missingValueStrategy="nullPrediction" says the
            # result is null (measured against JPMML: it ignores the strategy with
            # noTrueChildStrategy="returnLastPrediction" and in averaged ensembles): missing values
            # of the fields those trees split on are rejected here, as the model's rule says.
            treated = replaced or name not in null_prediction_fields
            self.inputs.append(FieldSpec(name, dtype, required=not replaced,
                                         allow_nan=treated and dtype in ("float", "double"),
                                         allowed_values=allowed, nullable=treated))
        self.classes: list = []
        self.dropped_classes: list = []
        if self.target and self.target in self.data_fields:
            tf = self.data_fields[self.target]
            self.target_dtype = _DTYPES.get(tf.get("dataType", "string"), "string")
            self.classes = [_typed(v.get("value"), self.target_dtype) for v in _children(tf, "Value")
                            if v.get("property", "valid") == "valid"]
            named = _unique(_typed(v, self.target_dtype) for v in _classes_named(self.model))
            if not self.classes:  # no Values declared: the classes the model names
                self.classes = named
            elif named and set(map(str, named)) < set(map(str, self.classes)):
                # a declared target value the model never predicts (RapidMiner's MISSING_VALUE)
                self.dropped_classes = [c for c in self.classes if str(c) not in set(map(str, named))]
                self.classes = [c for c in self.classes if str(c) in set(map(str, named))]
        else:
            self.target_dtype = "double"
        output = _child(self.model, "Output")
        self.outputs = _children(output, "OutputField") if output is not None else []
        if self.function == "classification" and not self.classes:
            self.classes = [_typed(o.get("value"), self.target_dtype) for o in self.outputs
                            if o.get("feature") == "probability" and o.get("value") is not None]


def _null_prediction_fields(model) -> set[str]:
    """Fields that a TreeModel with missingValueStrategy="nullPrediction" splits on."""
    fields: set[str] = set()
    for tree in model.iter():
        if _local(tree.tag) == "TreeModel" and tree.get("missingValueStrategy") == "nullPrediction":
            fields |= {e.get("field") for e in tree.iter() if _local(e.tag) in ("SimplePredicate", "SimpleSetPredicate")}
    return fields


# where each model type names the classes it can predict
_CLASS_ATTRIBUTES = {
    "ScoreDistribution": ("value",), "TargetValueCount": ("value",), "TargetValueStat": ("value",),
    "NormDiscrete": ("value",), "RegressionTable": ("targetCategory",), "SimpleRule": ("score",),
    "SupportVectorMachine": ("targetCategory", "alternateTargetCategory"), "TargetValueCounts": (),
}


def _classes_named(model) -> list[str]:
    """Class values the model's own elements name (ScoreDistributions, rules, tables, ...); a
    tree's Node scores count only where the model has no ScoreDistribution."""
    named, nodes = [], []
    for e in model.iter():
        tag = _local(e.tag)
        for attr in _CLASS_ATTRIBUTES.get(tag, ()):
            if e.get(attr) is not None:
                named.append(e.get(attr))
        if tag == "Node" and e.get("score") is not None:
            nodes.append(e.get("score"))
        if tag == "RuleSet" and e.get("defaultScore") is not None:
            named.append(e.get("defaultScore"))
    return named or nodes


def _unique(values) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _typed(value: str, dtype: str):
    if dtype == "integer":
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    if dtype in ("double", "float"):
        try:
            f = float(value)
            return int(f) if f.is_integer() else f
        except (TypeError, ValueError):
            return value
    return value


# --- the model --------------------------------------------------------------------------------

class PmmlModel(ModelBase):
    format = "pmml"

    def __init__(self, path: str | os.PathLike, *, name: str | None = None, version: str | None = None,
                 input_names: list[str] | None = None) -> None:
        p = Path(path)
        self.path = str(p)
        data, root = read_pmml_safely(p)
        doc = _PmmlDoc(root, p)
        self._doc = doc
        header = doc.header
        self.metadata = {k: v for k, v in doc.extensions.items()}
        if header is not None:
            app = _child(header, "Application")
            if app is not None:
                self.metadata["producer"] = f"{app.get('name', '')} {app.get('version', '')}".strip()
            if header.get("description"):
                self.metadata["description"] = header.get("description")
        self.metadata["function"] = doc.function
        self.metadata["algorithm"] = doc.model.get("algorithmName", _local(doc.model.tag))
        self.name = name or doc.extensions.get("streamscore.name") or doc.model.get("modelName") or p.stem
        self.version = (version or doc.extensions.get("streamscore.version")
                        or (header.get("modelVersion") if header is not None else None) or "0")
        if doc.function == "classification":
            self.task = "classification"
            if not doc.classes:
                raise ModelLoadError(f"{p.name}: classification PMML without declared classes")
        elif doc.function == "regression":
            self.task = "regression"
        else:
            raise ModelLoadError(f"{p.name}: PMML function {doc.function!r} is not supported (classification, regression)")
        if not doc.inputs:
            raise ModelLoadError(f"{p.name}: PMML model without active input fields")
        if input_names is not None and list(input_names) != [f.name for f in doc.inputs]:
            raise ModelLoadError(f"{p.name}: a PMML file names its inputs ({[f.name for f in doc.inputs]}); "
                                 f"input_names {list(input_names)} differ")

        gateway = PmmlRuntime.acquire()
        self._held = True
        try:
            self._java = gateway.jvm.org.pmml4s.model.Model.fromString(data.decode("utf-8"))
            engine_outputs = [str(n) for n in self._java.outputNames()]
        except Exception as exc:
            self.close()
            raise ModelLoadError(f"{p.name}: PMML4S could not load the model: {_java_message(exc)}") from exc
        try:
            self._plan_outputs(engine_outputs)
        except ModelLoadError:
            self.close()
            raise
        self.schema = ModelSchema(inputs=tuple(doc.inputs), outputs=output_fields(
            self.task, self.classes, self._label_dtype, probabilities=bool(self._proba_cols)))
        # inputs whose missing values reach the engine (positions in validate()'s valid batch)
        self._nullable = [(i, f.name, f.dtype in ("float", "double"), doc.treated_as_missing.get(f.name))
                          for i, f in enumerate(self.schema.inputs) if f.nullable]

    # -- what the engine's outputs mean, decided once ----------------------------------------

    def _plan_outputs(self, engine: list[str]) -> None:
        """Pick, from the engine's output columns, the model's answer: the value (regression), or
        the label and the per-class probabilities (classification; a label and the model's
        confidence when it gives no probabilities). Decided at load, not per batch."""
        doc, outs = self._doc, self._doc.outputs
        final = [o for o in outs if o.get("isFinalResult", "true") != "false" and o.get("name") in engine]
        self._proba_cols: list[str] = []
        self._label_col = self._score_col = self._value_col = None
        self._label_dtype = None
        if self.task == "regression":
            self._value_col = _model_answer(outs, final, engine, doc.target)
            if self._value_col is None:
                raise ModelLoadError(f"{self.name}: PMML output has no predicted value (columns {engine})")
            self.metadata["scored_output"] = self._value_col
            return
        predicted = next((o.get("name") for o in final if o.get("feature", "predictedValue") == "predictedValue"), None)
        self._label_col = predicted or next((c for c in (f"predicted_{doc.target}", doc.target) if c in engine), None)
        declared = {str(o.get("value")): o.get("name") for o in final
                    if o.get("feature") == "probability" and o.get("value") is not None}
        engine_proba = _local(doc.model.tag) not in _NO_PROBABILITIES  # e.g. SVM: 0/1 indicators, not probabilities
        cols = {}
        for c in doc.classes:
            col = declared.get(str(c))
            if col is None and engine_proba:
                col = next((n for n in (f"probability({c})", f"probability_{c}") if n in engine), None)
            if col is not None:
                cols[c] = col
        if len(cols) >= 2:
            self.classes = tuple(cols)
            self._proba_cols = list(cols.values())
            dropped = doc.dropped_classes + [c for c in doc.classes if c not in cols]
            if dropped:  # e.g. RapidMiner's MISSING_VALUE: declared, never given a probability
                self.metadata["classes_without_probability"] = json.dumps([str(c) for c in dropped])
        else:
            if self._label_col is None:
                raise ModelLoadError(f"{self.name}: PMML classifier gives neither probabilities nor a predicted "
                                     f"label (columns {engine})")
            self.classes = tuple(doc.classes)
            confidence = [o.get("name") for o in final if o.get("feature") == "confidence"
                          or (o.get("feature") == "probability" and o.get("value") is None)]
            self._score_col = confidence[0] if confidence else ("confidence" if "confidence" in engine else None)
            self.metadata["scored_output"] = (f"label {self._label_col}, score {self._score_col}" if self._score_col
                                              else f"label {self._label_col}, no score (the model gives none)")
        self._label_dtype = "string" if (doc.target_dtype == "string"
                                         or any(isinstance(c, str) for c in self.classes)) else "integer"

    # -- validation: the engine decides what missing values do --------------------------------

    def validate(self, batch: Batch) -> ValidationResult:
        """Shared validation, then rows holding a missing value (or a value the model treats as
        missing) are scored: those the model's own rules give no result for are rejected
        (``missing:<field>``, ``invalid:<field>=<value>``); the others go on to predict."""
        result = super().validate(batch)
        valid = result.valid
        if valid.num_rows == 0 or not self._nullable:
            return result
        risky = np.zeros(valid.num_rows, dtype=bool)
        why: dict[str, np.ndarray] = {}
        columns = valid.columns  # the input columns, in input order
        for pos, name, floating, domain in self._nullable:
            col = columns[pos]
            mask = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
            if floating:
                values = col.to_numpy(zero_copy_only=False)
                if np.isnan(values.sum()):  # one pass without allocating in the common case
                    nan = np.isnan(values)
                    mask = nan if mask is None else (mask | nan)
            if mask is not None and mask.any():
                why[f"missing:{name}"] = mask
                risky |= mask
            if domain is not None:
                outside = ~pc.is_in(col.cast(pa.string()), value_set=pa.array(list(domain))).fill_null(True) \
                    .to_numpy(zero_copy_only=False)
                if outside.any():
                    why[f"invalid:{name}"] = outside
                    risky |= outside
        if not risky.any():
            return result
        at = np.flatnonzero(risky)
        probe = self.predict(valid.take(pa.array(at)))
        score = probe.column(SCORE).to_numpy(zero_copy_only=False).astype(np.float64)
        empty = np.isnan(score) if (self.task == "regression" or self._proba_cols) else np.zeros(len(at), bool)
        empty |= probe.column(LABEL).is_null().to_numpy(zero_copy_only=False)
        if not empty.any():
            return result
        refused = at[empty]
        reasons = []
        for i in refused:
            parts = []
            for key, mask in why.items():
                if mask[i]:
                    if key.startswith("invalid:"):
                        name = key.split(":", 1)[1]
                        value = valid.column(valid.schema.get_field_index(name))[int(i)].as_py()
                        parts.append(f"{key}={value}")
                    else:
                        parts.append(key)
            reasons.append(";".join(parts) or "no_result")
        keep = np.ones(valid.num_rows, dtype=bool)
        keep[refused] = False
        originals = result.valid_index[refused]
        rejected = np.concatenate([result.rejected_index, originals])
        all_reasons = list(result.reasons) + reasons
        order = np.argsort(rejected, kind="stable")
        return ValidationResult(valid=valid.filter(pa.array(keep)), valid_index=result.valid_index[keep],
                                rejected_index=rejected[order], reasons=[all_reasons[k] for k in order])

    # -- scoring ----------------------------------------------------------------------------

    def _payload(self, rb: pa.RecordBatch) -> str:
        names = self.schema.input_names
        cols = []
        for name in names:
            col = column_of(rb, name)
            if pa.types.is_floating(col.type):
                values = col.to_numpy(zero_copy_only=False)
                if np.isnan(values).any():  # JSON has no NaN: a NaN is a missing value in PMML
                    cols.append([None if v != v else v for v in values.tolist()])
                    continue
                cols.append(values.tolist())
            else:
                cols.append(col.to_pylist())
        return json.dumps({"columns": names, "data": [list(r) for r in zip(*cols)]}, allow_nan=False)

    def predict(self, batch: Batch) -> pa.RecordBatch:
        rb = as_record_batch(batch)
        if rb.num_rows == 0:
            return empty_outputs(self.schema)
        if self._java is None:
            raise RuntimeError(f"{self.name}: model is closed")
        try:
            raw = self._java.predict(self._payload(rb))
        except Exception as exc:
            raise RuntimeError(f"{self.name}: PMML4S failed on a batch of {rb.num_rows} rows: {_java_message(exc)}") from exc
        result = json.loads(raw)
        columns = result.get("columns", [])
        data = result.get("data", [])
        if len(data) != rb.num_rows:
            raise RuntimeError(f"{self.name}: PMML4S returned {len(data)} rows for {rb.num_rows}")
        index = {c: j for j, c in enumerate(columns)}
        try:
            if self.task == "regression":
                return regressor_outputs(_float_column(data, index[self._value_col]))
            if not self._proba_cols:
                labels = _label_column(data, index[self._label_col], self._label_dtype)
                score = (_float_column(data, index[self._score_col]) if self._score_col
                         else np.full(len(data), np.nan))
                return label_outputs(labels, score, self._label_dtype)
        except KeyError as exc:
            raise RuntimeError(f"{self.name}: PMML4S output lacks column {exc} (columns {columns})") from None
        proba = np.column_stack([_float_column(data, index[c]) for c in self._proba_cols])
        return classifier_outputs(proba, self.classes)  # label: the arg-max class (null where no result)

    def close(self) -> None:
        self._java = None
        if getattr(self, "_held", False):
            self._held = False
            PmmlRuntime.release()

    def __del__(self):  # a forgotten close() must not keep the JVM alive forever
        try:
            self.close()
        except Exception:
            pass


def _label_column(data: list, j: int, dtype: str) -> list:
    out = []
    for row in data:
        v = row[j]
        if v is None:
            out.append(None)
        elif dtype == "integer":
            out.append(int(float(v)))
        else:
            out.append(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    return out


def _model_answer(outputs: list, final: list, engine: list[str], target: str | None) -> str | None:
    """The engine column holding a regression's answer: the last transformedValue OutputField
    computed from the predicted value (R gbm adds its intercept there, e1071 SVM rescales), else
    the predictedValue OutputField, else the engine's default column."""
    derived = {o.get("name") for o in outputs if o.get("feature", "predictedValue") == "predictedValue"}
    answer = None
    for o in outputs:
        if o.get("feature") in ("transformedValue", "decision") and o.get("name") not in derived:
            refs = {e.get("field") for e in o.iter() if _local(e.tag) == "FieldRef"}
            if refs & derived:
                derived.add(o.get("name"))
                if o in final and o.get("dataType", "double") in ("double", "float", "integer"):
                    answer = o.get("name")
    if answer is not None:
        return answer
    predicted = next((o.get("name") for o in final if o.get("feature", "predictedValue") == "predictedValue"), None)
    if predicted is not None:
        return predicted
    for cand in (f"predicted_{target}", target):
        if cand in engine:
            return cand
    return engine[0] if len(engine) == 1 else None


def _float_column(data: list, j: int) -> np.ndarray:
    col = [row[j] for row in data]
    try:
        return np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray([np.nan if v is None else float(v) for v in col], dtype=np.float64)


def _java_message(exc: Exception) -> str:
    text = str(exc)
    first = [line for line in text.splitlines() if line.strip() and not line.strip().startswith("at ")]
    return " | ".join(first[:3])[:500]

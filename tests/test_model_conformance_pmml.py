"""PMML conformance: hand-written PMML files, one feature each, scored through ``load_model`` and
compared per row with the JPMML reference evaluator (``jpmml_evaluator`` on PyPI, on its own JVM).

The rule checked for every row: where JPMML gives a result, streamscore accepts the row and gives
the same answer (1e-6 absolute or relative; same label); where JPMML gives none (the model's own
rules say "no result"), streamscore rejects the row with a reason. The one documented exception:
fields split on by ``TreeModel@missingValueStrategy="nullPrediction"`` trees, whose missing values
are rejected even where a traversal would not reach them (PMML4S ignores that strategy; see
model_formats/README.md), so a rejection there is allowed, a wrong number never is.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pytest

from model_formats import LABEL, SCORE, load_model
from model_formats_fixtures import pmml_jvm, pmml_skip_reason  # noqa: F401  (pytest fixture)

TOL = 1e-6

HEAD = '<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4"><Header/>'


def fields(*specs: str) -> str:
    return "<DataDictionary>" + "".join(specs) + "</DataDictionary>"


def num(name: str) -> str:
    return f'<DataField name="{name}" optype="continuous" dataType="double"/>'


def cat(name: str, values, dtype: str = "string") -> str:
    vals = "".join(f'<Value value="{v}"/>' for v in values)
    return f'<DataField name="{name}" optype="categorical" dataType="{dtype}">{vals}</DataField>'


def mining(*active: str, target: str = "y", extra: dict | None = None) -> str:
    extra = extra or {}
    out = f'<MiningSchema><MiningField name="{target}" usageType="target"/>'
    for a in active:
        out += f'<MiningField name="{a}" {extra.get(a, "")}/>'
    return out + "</MiningSchema>"


def tree(strategy: str, no_true_child: str, function: str = "regression", ids: str = "n") -> str:
    default = f' defaultChild="{ids}1"' if strategy == "defaultChild" else ""
    default2 = f' defaultChild="{ids}2"' if strategy == "defaultChild" else ""
    dist = (lambda a, b: f'<ScoreDistribution value="no" recordCount="{a}"/><ScoreDistribution value="yes" '
            f'recordCount="{b}"/>') if function == "classification" else (lambda a, b: "")
    s = (lambda c, r: c) if function == "classification" else (lambda c, r: r)
    return (f'<TreeModel functionName="{function}" missingValueStrategy="{strategy}" '
            f'noTrueChildStrategy="{no_true_child}">{mining("x1", "x2")}'
            f'<Node score="{s("no", 0)}" recordCount="100"{default}><True/>{dist(50, 50)}'
            f'<Node id="{ids}1" score="{s("yes", 1)}" recordCount="60"{default2}>'
            f'<SimplePredicate field="x1" operator="lessOrEqual" value="0"/>{dist(20, 40)}'
            f'<Node id="{ids}2" score="{s("yes", 10)}" recordCount="40"><SimplePredicate field="x2" operator="lessOrEqual" '
            f'value="0"/>{dist(5, 35)}</Node>'
            f'<Node id="{ids}3" score="{s("no", 20)}" recordCount="20"><SimplePredicate field="x2" operator="greaterThan" '
            f'value="0"/>{dist(15, 5)}</Node></Node>'
            f'<Node id="{ids}4" score="{s("no", 2)}" recordCount="40"><SimplePredicate field="x1" operator="greaterThan" value="0"/>'
            f'{dist(30, 10)}</Node></Node></TreeModel>')


def ensemble(method: str, strategy: str, no_true_child: str, function: str = "regression") -> str:
    segs = "".join(f'<Segment id="{i}"><True/>{tree(strategy, no_true_child, function, ids=f"s{i}n")}</Segment>'
                   for i in (1, 2))
    return (f'<MiningModel functionName="{function}">{mining("x1", "x2")}'
            f'<Segmentation multipleModelMethod="{method}">{segs}</Segmentation></MiningModel>')


REG_XY = fields(num("x1"), num("x2"), num("y"))
CLS_XY = fields(num("x1"), num("x2"), cat("y", ["no", "yes"]))
ROWS_XY = [{"x1": 1.0, "x2": 1.0}, {"x1": None, "x2": 1.0}, {"x1": -1.0, "x2": None}, {"x1": 1.0, "x2": None},
           {"x1": None, "x2": None}, {"x1": -0.5, "x2": 0.25}, {"x1": -2.0, "x2": -3.0}]

LINEAR = ('<RegressionTable intercept="0.5"><NumericPredictor name="x1" coefficient="2"/>'
          '<NumericPredictor name="x2" coefficient="-1"/></RegressionTable>')

CASES: dict[str, tuple[str, list[dict], str]] = {}  # name -> (PMML text, rows, JPMML column with the answer)


def case(name: str, body: str, rows: list[dict], answer: str = "y") -> None:
    CASES[name] = (HEAD + body + "</PMML>", rows, answer)


# missing-value treatments on MiningFields
case("replacement", REG_XY + '<RegressionModel functionName="regression">'
     + mining("x1", "x2", extra={"x1": 'missingValueReplacement="1.5"'}) + LINEAR + "</RegressionModel>", ROWS_XY)
case("treatment_as_mean", REG_XY + '<RegressionModel functionName="regression">'
     + mining("x1", "x2", extra={"x1": 'missingValueTreatment="asMean" missingValueReplacement="0.25"',
                                 "x2": 'missingValueTreatment="asMode" missingValueReplacement="-1"'})
     + LINEAR + "</RegressionModel>", ROWS_XY)
case("no_treatment", REG_XY + '<RegressionModel functionName="regression">' + mining("x1", "x2") + LINEAR
     + "</RegressionModel>", ROWS_XY)
# tree missing-value strategies, single trees and ensembles
for strategy in ("none", "lastPrediction", "nullPrediction", "defaultChild"):
    for ntc in ("returnNullPrediction", "returnLastPrediction"):
        case(f"tree_{strategy}_{ntc}", REG_XY + tree(strategy, ntc), ROWS_XY)
    case(f"sum_{strategy}", REG_XY + ensemble("sum", strategy, "returnLastPrediction"), ROWS_XY)
    case(f"forest_{strategy}", CLS_XY + ensemble("average", strategy, "returnNullPrediction", "classification"),
         ROWS_XY)
# output fields: the model's answer is the transformed value (R gbm: + intercept; e1071: rescaled)
case("output_transformed", REG_XY + '<RegressionModel functionName="regression">' + mining("x1", "x2")
     + '<Output><OutputField name="raw" feature="predictedValue" dataType="double" optype="continuous"/>'
       '<OutputField name="shifted" feature="transformedValue" dataType="double" optype="continuous">'
       '<Apply function="+"><FieldRef field="raw"/><Constant dataType="double">23.4</Constant></Apply></OutputField>'
       '<OutputField name="rescaled" feature="transformedValue" dataType="double" optype="continuous">'
       '<Apply function="*"><FieldRef field="shifted"/><Constant dataType="double">0.5</Constant></Apply>'
       '</OutputField></Output>' + LINEAR + "</RegressionModel>", ROWS_XY, answer="rescaled")
# classifiers without per-class probabilities
case("svm_label_only", CLS_XY + '<SupportVectorMachineModel functionName="classification" '
     'classificationMethod="OneAgainstOne">' + mining("x1", "x2") + '<LinearKernelType/>'
     '<VectorDictionary numberOfVectors="2"><VectorFields numberOfFields="2"><FieldRef field="x1"/>'
     '<FieldRef field="x2"/></VectorFields>'
     '<VectorInstance id="a"><REAL-SparseArray n="2"><Indices>1 2</Indices><REAL-Entries>1.0 0.5</REAL-Entries>'
     '</REAL-SparseArray></VectorInstance><VectorInstance id="b"><REAL-SparseArray n="2"><Indices>1 2</Indices>'
     '<REAL-Entries>-1.0 0.2</REAL-Entries></REAL-SparseArray></VectorInstance></VectorDictionary>'
     '<SupportVectorMachine targetCategory="no" alternateTargetCategory="yes"><SupportVectors numberOfAttributes="2" '
     'numberOfSupportVectors="2"><SupportVector vectorId="a"/><SupportVector vectorId="b"/></SupportVectors>'
     '<Coefficients numberOfCoefficients="2" absoluteValue="0.1"><Coefficient value="1.0"/>'
     '<Coefficient value="-1.0"/></Coefficients></SupportVectorMachine></SupportVectorMachineModel>', ROWS_XY)
RULE_ROWS = [{"x1": 2.0, "color": "blue"}, {"x1": 0.0, "color": "red"}, {"x1": 0.0, "color": "blue"},
             {"x1": None, "color": "blue"}, {"x1": 0.0, "color": None}]
case("ruleset_extra_target_value", fields(num("x1"), cat("color", ["red", "blue"]),
                                          cat("y", ["no", "yes", "MISSING_VALUE"]))
     + '<RuleSetModel functionName="classification">' + mining("x1", "color")
     + '<RuleSet defaultScore="no" defaultConfidence="0.3"><RuleSelectionMethod criterion="firstHit"/>'
       '<SimpleRule id="r1" score="yes" confidence="0.9"><SimplePredicate field="x1" operator="greaterThan" value="1"/>'
       '</SimpleRule><SimpleRule id="r2" score="yes" confidence="0.7"><SimplePredicate field="color" '
       'operator="equal" value="red"/></SimpleRule></RuleSet></RuleSetModel>', RULE_ROWS)
case("tree_extra_target_value", fields(num("x1"), num("x2"), cat("y", ["no", "yes", "MISSING_VALUE"]))
     + tree("defaultChild", "returnLastPrediction", "classification"), ROWS_XY)
# categories declared as strings, given integers (R factors read from JSON/CSV); invalid values
CYL_ROWS = [{"x1": 1.0, "cyl": 4}, {"x1": 1.0, "cyl": 6}, {"x1": 2.0, "cyl": "8"}, {"x1": 2.0, "cyl": 5},
            {"x1": 2.0, "cyl": None}]
CYL_TABLE = ('<RegressionTable intercept="1"><NumericPredictor name="x1" coefficient="0.5"/>'
             '<CategoricalPredictor name="cyl" value="4" coefficient="0"/><CategoricalPredictor name="cyl" value="6" '
             'coefficient="1.5"/><CategoricalPredictor name="cyl" value="8" coefficient="3"/></RegressionTable>')
case("integer_categories", fields(num("x1"), cat("cyl", [4, 6, 8]), num("y"))
     + '<RegressionModel functionName="regression">' + mining("x1", "cyl") + CYL_TABLE + "</RegressionModel>", CYL_ROWS)
case("invalid_as_missing", fields(num("x1"), cat("cyl", [4, 6, 8]), num("y"))
     + '<RegressionModel functionName="regression">'
     + mining("x1", "cyl", extra={"cyl": 'invalidValueTreatment="asMissing" missingValueReplacement="6"'})
     + CYL_TABLE + "</RegressionModel>", CYL_ROWS)
case("invalid_as_missing_no_replacement", fields(num("x1"), cat("cyl", [4, 6, 8]), num("y"))
     + '<RegressionModel functionName="regression">'
     + mining("x1", "cyl", extra={"cyl": 'invalidValueTreatment="asMissing"'}) + CYL_TABLE + "</RegressionModel>",
     CYL_ROWS)
# naive Bayes (a missing input is skipped), neural network
case("naive_bayes", fields(num("x1"), cat("color", ["red", "blue"]), cat("y", ["no", "yes"]))
     + '<NaiveBayesModel functionName="classification" threshold="0.001">' + mining("x1", "color")
     + '<BayesInputs><BayesInput fieldName="color"><PairCounts value="red"><TargetValueCounts>'
       '<TargetValueCount value="no" count="10"/><TargetValueCount value="yes" count="30"/></TargetValueCounts>'
       '</PairCounts><PairCounts value="blue"><TargetValueCounts><TargetValueCount value="no" count="30"/>'
       '<TargetValueCount value="yes" count="10"/></TargetValueCounts></PairCounts></BayesInput>'
       '<BayesInput fieldName="x1"><TargetValueStats><TargetValueStat value="no"><GaussianDistribution mean="0" '
       'variance="1"/></TargetValueStat><TargetValueStat value="yes"><GaussianDistribution mean="1" variance="2"/>'
       '</TargetValueStat></TargetValueStats></BayesInput></BayesInputs><BayesOutput fieldName="y">'
       '<TargetValueCounts><TargetValueCount value="no" count="40"/><TargetValueCount value="yes" count="40"/>'
       '</TargetValueCounts></BayesOutput></NaiveBayesModel>', RULE_ROWS)
case("neural_network", CLS_XY + '<NeuralNetwork functionName="classification" activationFunction="logistic">'
     + mining("x1", "x2") + '<NeuralInputs numberOfInputs="2">'
       '<NeuralInput id="i1"><DerivedField optype="continuous" dataType="double"><FieldRef field="x1"/></DerivedField>'
       '</NeuralInput><NeuralInput id="i2"><DerivedField optype="continuous" dataType="double"><FieldRef field="x2"/>'
       '</DerivedField></NeuralInput></NeuralInputs><NeuralLayer numberOfNeurons="2">'
       '<Neuron id="h1" bias="0.1"><Con from="i1" weight="0.5"/><Con from="i2" weight="-0.3"/></Neuron>'
       '<Neuron id="h2" bias="-0.2"><Con from="i1" weight="-0.4"/><Con from="i2" weight="0.8"/></Neuron></NeuralLayer>'
       '<NeuralLayer numberOfNeurons="2" activationFunction="identity" normalizationMethod="softmax">'
       '<Neuron id="o1" bias="0.0"><Con from="h1" weight="1.2"/><Con from="h2" weight="-0.7"/></Neuron>'
       '<Neuron id="o2" bias="0.1"><Con from="h1" weight="-1.1"/><Con from="h2" weight="0.9"/></Neuron></NeuralLayer>'
       '<NeuralOutputs numberOfOutputs="2"><NeuralOutput outputNeuron="o1"><DerivedField optype="categorical" '
       'dataType="string"><NormDiscrete field="y" value="no"/></DerivedField></NeuralOutput><NeuralOutput '
       'outputNeuron="o2"><DerivedField optype="categorical" dataType="string"><NormDiscrete field="y" value="yes"/>'
       '</DerivedField></NeuralOutput></NeuralOutputs></NeuralNetwork>', ROWS_XY)


# --- the reference evaluator ------------------------------------------------------------------

@pytest.fixture(scope="module")
def jpmml():
    """JPMML's evaluator on a JVM of its own (py4j, ended with the module)."""
    reason = pmml_skip_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("jpmml_evaluator")
    from jpmml_evaluator.py4j import Py4JBackend, _classpath
    from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway

    from model_formats.pmml_model import find_java

    port, proc = launch_gateway(classpath=os.pathsep.join(_classpath(user_classpath=[])), java_path=find_java(), die_on_exit=True,
                                return_proc=True)
    gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port))
    yield Py4JBackend(gateway)
    gateway.shutdown()
    proc.stdin.close()
    proc.wait(timeout=30)


def reference(backend, path, rows: list[dict], answer: str) -> list[dict | None]:
    """JPMML's result per row ({answer, probability(<class>)...}) or None where it gives none."""
    import pandas as pd
    from jpmml_evaluator import make_evaluator

    text = path.read_text()
    label_only = "RuleSetModel" in text or "SupportVectorMachineModel" in text
    if 'functionName="classification"' in text and "<Output>" not in text and not label_only:
        # JPMML returns class probabilities only as declared outputs: declare them, for the reference only
        labels = [v for v in ("no", "yes") if f'value="{v}"' in text]
        outputs = "".join(f'<OutputField name="probability({v})" feature="probability" value="{v}" '
                          f'dataType="double" optype="continuous"/>' for v in labels)
        text = text.replace("</MiningSchema>", f"</MiningSchema><Output>{outputs}</Output>", 1)
        path = path.with_suffix(".reference.pmml")
        path.write_text(text)
    evaluator = make_evaluator(str(path), backend=backend).verify()
    out = []
    for row in rows:  # one at a time: an error in one row must not hide the others' results
        frame = pd.DataFrame([{k: (str(v) if isinstance(v, int) else v) for k, v in row.items()}])
        try:
            result = evaluator.evaluateAll(frame).iloc[0].to_dict()
        except Exception:
            out.append(None)
            continue
        value = result.get(answer)
        if result.get("errors") or value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(None)
        else:
            out.append(result)
    return out


def batch_of(rows: list[dict]) -> dict[str, np.ndarray]:
    """Columns as Python objects, the way decoded JSON events arrive (None: missing)."""
    return {n: np.array([r[n] for r in rows], dtype=object) for n in rows[0]}


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL or abs(a - b) <= TOL * abs(b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pmml_feature_agrees_with_jpmml(name, tmp_path, pmml_jvm, jpmml):
    text, rows, answer = CASES[name]
    path = tmp_path / f"{name}.pmml"
    path.write_text(text)
    expected = reference(jpmml, path, rows, answer)
    model = load_model(path)
    try:
        r = model.validate(batch_of(rows))
        out = model.predict(r.valid)
        scored = {int(i): k for k, i in enumerate(r.valid_index)}
        rejected = dict(zip(map(int, r.rejected_index), r.reasons))
        for i, (row, ref) in enumerate(zip(rows, expected)):
            if ref is None:
                assert i in rejected, f"{name} row {i} {row}: JPMML gives no result, streamscore scored it"
                assert rejected[i], f"{name} row {i}: rejected without a reason"
                continue
            if i in rejected:
                # allowed only for the documented nullPrediction case, with a missing value
                assert "nullPrediction" in text and any(v is None for v in row.values()), \
                    f"{name} row {i} {row}: JPMML gives {ref[answer]!r}, streamscore rejected it ({rejected[i]})"
                continue
            k = scored[i]
            if model.task == "regression":
                got = out.column(SCORE)[k].as_py()
                assert close(got, float(ref[answer])), f"{name} row {i} {row}: {got} != JPMML {ref[answer]}"
                continue
            assert str(out.column(LABEL)[k].as_py()) == str(ref[answer]), f"{name} row {i} {row}"
            for c in model.classes:
                if f"probability_{c}" in out.schema.names:
                    got = out.column(f"probability_{c}")[k].as_py()
                    assert close(got, float(ref[f"probability({c})"])), f"{name} row {i} class {c}: {got}"
    finally:
        model.close()


def test_pmml_schema_decisions_at_load(tmp_path, pmml_jvm):
    """What each feature changes in the schema, decided when the file is loaded."""
    def load(name):
        path = tmp_path / f"{name}.pmml"
        path.write_text(CASES[name][0])
        return load_model(path)

    m = load("output_transformed")
    assert m.metadata["scored_output"] == "rescaled"
    m = load("svm_label_only")
    assert [f.name for f in m.schema.outputs] == [SCORE, LABEL] and list(m.classes) == ["no", "yes"]
    m = load("ruleset_extra_target_value")
    assert m.metadata["scored_output"] == "label predicted_y, score confidence"
    out = m.predict(pa.RecordBatch.from_pydict({"x1": [2.0], "color": ["blue"]}))
    assert out.to_pydict() == {SCORE: [0.9], LABEL: ["yes"]}
    m = load("integer_categories")
    spec = m.schema.inputs[1]
    assert (spec.dtype, spec.allowed_values) == ("string", ("4", "6", "8"))
    r = m.validate(pa.RecordBatch.from_pydict({"x1": [1.0, 1.0], "cyl": [4, 5]}))
    assert r.reasons == ["out_of_domain:cyl=5"]
    m = load("tree_nullPrediction_returnLastPrediction")
    assert not any(f.nullable for f in m.schema.inputs)
    m = load("tree_defaultChild_returnLastPrediction")
    assert all(f.nullable and f.allow_nan for f in m.schema.inputs)


# --- `streamscore models check` on one model and sample events --------------------------------

def _cli(*argv) -> int:
    import argparse

    from jobs import models_cmd

    parser = argparse.ArgumentParser(prog="streamscore")
    models_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args) or 0)


def test_models_check_one_model_reports_rejections_with_reasons(tmp_path, pmml_jvm, capsys):
    import json

    path = tmp_path / "cyl.pmml"
    path.write_text(CASES["integer_categories"][0])
    sample = tmp_path / "events.jsonl"  # JSON numbers and text mixed in one column, as events carry them
    sample.write_text("\n".join(json.dumps(r) for r in CYL_ROWS) + "\n")
    assert _cli("models", "check", str(path), "--sample", str(sample)) == 0
    out = capsys.readouterr().out
    assert "4 of 5 rows scored" in out  # a missing category adds nothing to a regression (JPMML agrees)
    assert "out_of_domain:cyl ×1" in out  # the reasons, in the table
    assert "row 3: out_of_domain:cyl=5" in out
    assert _cli("models", "check", str(path), "--sample", str(sample), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scored_rows"] == 4 and report["models"][0]["rejected"] == [
        {"row": 3, "reason": "out_of_domain:cyl=5"}]

    # nothing scored: says so, and does not claim the models disagree
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x1": 1.0, "cyl": 5}\n{"x1": "x", "cyl": 4}\n')
    assert _cli("models", "check", str(path), str(path), "--sample", str(bad)) == 1
    out = capsys.readouterr().out
    assert "no row could be scored" in out and "disagree" not in out
    assert "wrong_type:x1 ×1" in out

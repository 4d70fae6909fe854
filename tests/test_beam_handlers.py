"""The streamscore handlers inside stock Beam transforms, as a Beam user would plug them in:
rows → stock ``Enrichment`` (Plasma feature store) → stock ``RunInference`` (PMML, ONNX, skops)
on the DirectRunner, with Beam's batching, metrics and dead-letter output."""
from __future__ import annotations

import shutil
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference

from beam_helpers import collect, load, onnx_variant
from connectors.feature_store import load_table
from jobs import demo_data
from model_formats.export import export_onnx, export_skops
from apache_beam.transforms.enrichment import Enrichment

from connectors import dead_letter as dl
from operators import steps
from operators.beam import FeatureStoreEnrichmentHandler, Rejected, StreamscoreModelHandler

INPUTS = ["amount", "f0", "f1"]

PMML_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4">
  <Header description="logistic regression over amount, f0, f1 (written by the Beam handler test)">
    <Extension name="streamscore.name" value="beam-logit"/>
    <Extension name="streamscore.version" value="5"/>
  </Header>
  <DataDictionary numberOfFields="4">
    <DataField name="amount" optype="continuous" dataType="double"/>
    <DataField name="f0" optype="continuous" dataType="double"/>
    <DataField name="f1" optype="continuous" dataType="double"/>
    <DataField name="y" optype="categorical" dataType="integer"><Value value="0"/><Value value="1"/></DataField>
  </DataDictionary>
  <RegressionModel functionName="classification" normalizationMethod="logit">
    <MiningSchema>
      <MiningField name="amount"/><MiningField name="f0"/><MiningField name="f1"/>
      <MiningField name="y" usageType="target"/>
    </MiningSchema>
    <Output>
      <OutputField name="probability(0)" optype="continuous" dataType="double" feature="probability" value="0"/>
      <OutputField name="probability(1)" optype="continuous" dataType="double" feature="probability" value="1"/>
    </Output>
    <RegressionTable targetCategory="1" intercept="{intercept!r}">
      <NumericPredictor name="amount" coefficient="{c0!r}"/>
      <NumericPredictor name="f0" coefficient="{c1!r}"/>
      <NumericPredictor name="f1" coefficient="{c2!r}"/>
    </RegressionTable>
    <RegressionTable targetCategory="0" intercept="0.0"/>
  </RegressionModel>
</PMML>
"""


@pytest.fixture(scope="module")
def logit(stack):
    """A logistic regression on amount, f0, f1 of the demo data, in three formats."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    rows = rng.integers(0, stack.entities, 4000)
    x = np.column_stack([demo_data.amounts(len(rows), rng)] +
                        [stack.features.column(n).to_numpy()[rows].astype(np.float64) for n in ("f0", "f1")])
    y = (0.02 * x[:, 0] + x[:, 1] - 0.5 * x[:, 2] + rng.normal(0, 0.5, len(rows)) > 0.6).astype(int)
    model = LogisticRegression().fit(x, y)
    folder = stack.workdir / "beam-handler-models"
    pmml = folder / "logit.pmml"
    folder.mkdir(exist_ok=True)
    pmml.write_text(PMML_TEMPLATE.format(intercept=float(model.intercept_[0]),
                                         **{f"c{i}": float(c) for i, c in enumerate(model.coef_[0])}))
    return {"sklearn": model, "pmml": pmml,
            "onnx": export_onnx(model, INPUTS, folder / "logit.onnx", name="beam-logit", version="5"),
            "skops": export_skops(model, INPUTS, folder / "logit.skops", name="beam-logit", version="5")}


def counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


@pytest.fixture(scope="module")
def feature_uris(stack):
    """The demo features in the stack's Plasma store and in an arrow-shm store."""
    shm = f"/dev/shm/streamscore-beam-test-{uuid.uuid4().hex[:8]}"
    load_table(f"arrow-shm://{shm}", stack.features, key="entity_id")
    yield {"plasma": stack.feature_uri, "arrow-shm": f"arrow-shm://{shm}"}
    shutil.rmtree(shm, ignore_errors=True)


@pytest.mark.parametrize("fmt,store", [("pmml", "plasma"), ("onnx", "plasma"), ("skops", "plasma"),
                                       ("onnx", "arrow-shm")])
def test_rows_enriched_and_scored_by_stock_transforms(stack, logit, feature_uris, tmp_path, fmt, store):
    rng = np.random.default_rng(9)
    entities = [int(e) for e in rng.integers(0, stack.entities, 300)]
    rows = [beam.Row(entity_id=e, amount=float(a)) for e, a in zip(entities, demo_data.amounts(300, rng))]
    unknown = beam.Row(entity_id=stack.entities + 7, amount=3.0)
    out = tmp_path / "results.pkl"
    p = beam.Pipeline(runner="DirectRunner")
    enriched = (p | beam.Create(rows + [unknown], reshuffle=False)
                | Enrichment(FeatureStoreEnrichmentHandler(feature_uris[store], "entity_id", max_batch_size=64)))
    results = enriched | RunInference(StreamscoreModelHandler(str(logit[fmt]), max_batch_size=50))
    collect(results, out, "results")
    result = p.run()
    result.wait_until_finish()

    by_entity = {r.example.entity_id: r for r in load(out)}
    assert len(by_entity) == len(set(entities)) + 1
    # the enrichment joined the store's row for the entity onto each request row
    features = stack.features
    for e in entities[:20]:
        joined = by_entity[e].example
        assert joined.amount is not None
        assert [getattr(joined, f"f{i}") for i in range(32)] == [features.column(f"f{i}")[e].as_py() for i in range(32)]
    # every known entity scored like the fitted model; the unknown one refused by the schema
    # an entity the store does not know is rejected as such, not as a schema failure
    assert by_entity[unknown.entity_id].inference == Rejected(dl.Reason.UNKNOWN_ENTITY, steps.UNKNOWN_ENTITY_DETAIL)
    assert {r.model_id for r in by_entity.values()} == {"beam-logit:5"}
    known = [by_entity[e] for e in sorted(set(entities))]
    x = np.array([[r.example.amount, r.example.f0, r.example.f1] for r in known])
    expected = logit["sklearn"].predict_proba(x)[:, 1]
    got = np.array([r.inference["score"] for r in known])
    assert np.abs(got - expected).max() <= (1e-5 if fmt == "onnx" else 1e-9)
    assert [r.inference["label"] for r in known] == list((expected > 0.5).astype(int))
    # Beam-style metrics: RunInference's own, and ours under its namespace
    assert counter(result, "num_inferences") == len(rows) + 1
    assert counter(result, "rows_scored") == len(rows)
    assert counter(result, "model_input_rejected") == 0
    sizes = result.metrics().query(MetricsFilter().with_name("inference_request_batch_size"))["distributions"]
    assert sizes and max(d.committed.max for d in sizes) <= 50
    # the enrichment batched its requests: one store call (RequestResponseIO request) per batch of
    # up to 64 (BatchElements grows its batches from 1 while it learns their cost, slower on a
    # busy machine: bounds, not a figure)
    calls = result.metrics().query(MetricsFilter().with_namespace("streamscore.Enrichment").with_name("requests"))
    assert (len(rows) + 1) / 64 <= sum(c.committed for c in calls["counters"]) <= (len(rows) + 1) / 2


def test_failed_row_batch_goes_to_runinference_dead_letter_output(stack, tmp_path):
    """A model exported with a fixed batch size of 7: onnxruntime refuses any other batch size at
    run time. With batches of exactly 7 rows, 10 rows make one good batch and one failed batch."""
    model = onnx_variant(stack.model_path, tmp_path / "fixed-batch.onnx", fixed_batch=7)
    rng = np.random.default_rng(4)
    rows = [dict({"amount": 5.0 + i}, **{f"f{j}": float(v) for j, v in enumerate(rng.standard_normal(32))})
            for i in range(10)]
    handler = StreamscoreModelHandler(str(model), min_batch_size=7, max_batch_size=7)
    good_out, bad_out = tmp_path / "good.pkl", tmp_path / "bad.pkl"
    with beam.Pipeline(runner="DirectRunner") as p:
        good, failed = (p | beam.Create(rows, reshuffle=False) | RunInference(handler).with_exception_handling())
        collect(good, good_out, "good")
        collect(failed.failed_inferences, bad_out, "bad")
    scored, failures = load(good_out), load(bad_out)
    assert len(scored) == 7 and all(0 <= r.inference["score"] <= 1 for r in scored)
    assert len(failures) == 1
    batch, (error_type, error, _traceback) = failures[0]
    assert len(batch) == 3 and error_type is RuntimeError and "onnxruntime failed on a batch of 3 rows" in error
    assert sorted([r["amount"] for r in batch] + [r.example["amount"] for r in scored]) == [5.0 + i for i in range(10)]

"""Shadows and a canary beside the champion, on micro-batches, without an engine (issue #14):
``operators.experiments.ExperimentScorer`` is what the Flink operator runs per batch.

* canary: a stable share of 100k distinct entities (±1 %), the same entities after a "restart"
  (a new scorer), served with the input's coordinates as prediction id, every event once;
* a shadow that raises, sleeps past its budget or fails to load: the served output is exactly
  the champion-only output, and the skipped batches are counted;
* comparison windows close per pair with the events compared.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from beam_helpers import onnx_variant
from connectors.events import DecoderSpec, EventSchema
from connectors.kafka.partition_reader import RecordChunk
from jobs import demo_data
from model_formats import load_model
from model_formats.reloading import Candidate, ChallengerOffer, ChallengerPlan
from operators import steps
from operators.experiments import ExperimentScorer, canary_mask
from operators.steps import MissingEntityPolicy

SCHEMA = EventSchema()
ENTITIES = 100_000


@pytest.fixture(scope="module")
def features():
    return demo_data.features_table(ENTITIES)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    champion = demo_data.demo_model(ENTITIES)
    return {"champion": champion,
            "canary": onnx_variant(champion, folder / "canary.onnx", version="2"),
            "shadow": onnx_variant(champion, folder / "shadow.onnx", version="3"),
            "raising": onnx_variant(champion, folder / "raising.onnx", version="4", fixed_batch=1)}


def enriched(features, entity_ids, topic="in", partition=0, first_offset=0) -> steps.MicroBatch:
    """A decoded, enriched micro-batch of one event per entity id (as the feature store answers)."""
    rng = np.random.default_rng(len(entity_ids))
    values = [demo_data.encode({"id": f"e{first_offset + i}", "entity_id": int(e), "amount": float(a), "ts": 1})
              for i, (e, a) in enumerate(zip(entity_ids, demo_data.amounts(len(entity_ids), rng)))]
    chunk = RecordChunk(topic, partition, values, list(range(first_offset, first_offset + len(values))))
    batch = steps.decode(DecoderSpec(SCHEMA).build(), chunk)
    keys = steps.lookup_keys(batch, SCHEMA.key_field)
    names = features.column_names[1:]
    rows = pa.RecordBatch.from_arrays([features.column(n).take(pa.array(keys)).combine_chunks() for n in names],
                                      names=names)
    return steps.join_features(batch, rows, np.ones(len(keys), dtype=bool), MissingEntityPolicy("dead_letter"))


def plan(files, *, shadows=(), canary_share=0.0, salt="fraud/production") -> ChallengerPlan:
    offers = [ChallengerOffer("shadow", Candidate(files[s])) for s in shadows]
    if canary_share:
        offers.append(ChallengerOffer("canary", Candidate(files["canary"]), canary_share))
    return ChallengerPlan(tuple(offers), salt)


def ready(scorer: ExperimentScorer, timeout_s: float = 60) -> ExperimentScorer:
    """Wait until every challenger has loaded (they load on threads of their own)."""
    deadline = time.monotonic() + timeout_s
    while not all(c.ready() or c.error for c in scorer._challengers.values()):
        assert time.monotonic() < deadline, "challengers did not load"
        time.sleep(0.02)
    return scorer


def rows(scored) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "scored_ts"} for r in scored.predictions.to_pylist()]


def test_canary_serves_a_stable_share_of_100k_entities(features, files):
    champion = load_model(str(files["champion"]))
    entity_ids = np.arange(ENTITIES)
    batches = [enriched(features, chunk, first_offset=int(chunk[0])) for chunk in np.array_split(entity_ids, 50)]

    def run() -> dict[int, str]:
        scorer = ready(ExperimentScorer(SCHEMA, window_ms=3_600_000))
        scorer.set_plan(plan(files, canary_share=0.10))
        ready(scorer)
        served = {}
        for batch in batches:
            out = scorer.score(batch, champion)
            assert out.dead_letters == [] and out.predictions.num_rows == batch.events.num_rows
            ids = out.predictions.column("prediction_id").to_pylist()
            assert sorted(ids) == sorted(f"in/0/{o}" for o in batch.events.column("_offset").to_pylist())
            for entity, role, version in zip(out.predictions.column("entity_id").to_pylist(),
                                             out.predictions.column("role").to_pylist(),
                                             out.predictions.column("model_version").to_pylist()):
                assert (role, version) in (("champion", "1"), ("canary", "2"))
                served[entity] = role
        scorer.close()
        return served

    first = run()
    assert len(first) == ENTITIES
    share = sum(r == "canary" for r in first.values()) / ENTITIES
    assert abs(share - 0.10) <= 0.01, share
    # the selection is canary_mask's, with the deployment's salt
    mask = canary_mask(entity_ids, "fraud/production", 0.10)
    assert {e for e, r in first.items() if r == "canary"} == set(entity_ids[mask].tolist())
    assert run() == first                         # a new scorer (a restart): the same entities


def test_canary_that_raises_falls_back_to_the_champion(features, files):
    champion = load_model(str(files["champion"]))
    scorer = ExperimentScorer(SCHEMA, window_ms=3_600_000)
    files = {**files, "canary": files["raising"]}
    scorer.set_plan(plan(files, canary_share=0.5))
    ready(scorer)
    batch = enriched(features, np.arange(200))
    out = scorer.score(batch, champion)
    alone = steps.score_batch(batch, champion, SCHEMA)
    assert sorted(map(str, rows(out))) == sorted(map(str, rows(alone)))
    assert scorer.canary_fallbacks == 1 and out.dead_letters == []


class Sleepy:
    """A model that takes ``seconds`` per batch (the champion's scores otherwise)."""

    def __init__(self, model, seconds: float) -> None:
        self._model, self.seconds = model, seconds
        self.name, self.version, self.schema = model.name, "9", model.schema

    def validate(self, batch):
        return self._model.validate(batch)

    def predict(self, batch):
        time.sleep(self.seconds)
        return self._model.predict(batch)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kind", ["raises", "sleeps", "cannot_load"])
def test_a_failing_shadow_changes_nothing_in_the_served_output(features, files, tmp_path, kind):
    champion = load_model(str(files["champion"]))
    budget_ms = 100
    if kind == "raises":
        challengers, loader = plan(files, shadows=["raising"]), None
    elif kind == "sleeps":
        challengers = plan(files, shadows=["shadow"])
        loader = lambda c: Sleepy(load_model(str(c.path)), 2.0)   # noqa: E731
    else:
        bad = tmp_path / "broken.onnx"
        bad.write_bytes(b"not a model")
        challengers, loader = ChallengerPlan((ChallengerOffer("shadow", Candidate(bad)),), "s"), None
    scorer = ExperimentScorer(SCHEMA, shadow_budget_ms=budget_ms, window_ms=3_600_000, loader=loader)
    scorer.set_plan(challengers)
    ready(scorer)
    batches = [enriched(features, np.arange(i * 100, i * 100 + 100), first_offset=i * 100) for i in range(5)]
    for batch in batches:
        out = scorer.score(batch, champion)
        assert rows(out) == rows(steps.score_batch(batch, champion, SCHEMA))
        assert out.dead_letters == [] and out.experiment.shadow_predictions == []
    assert scorer.shadow_skipped == len(batches)
    skipped = scorer.skipped
    if kind == "cannot_load":
        assert skipped["load"] == len(batches)
    elif kind == "raises":                          # three failures in a row, then it sits batches out
        assert skipped["error"] >= 3 and skipped["error"] + skipped["backoff"] == len(batches)
    else:                                           # past its budget, then busy while it sleeps
        assert skipped["budget"] >= 1 and skipped["budget"] + skipped["busy"] + skipped["backoff"] == len(batches)
    scorer.close()


def test_shadow_predictions_and_comparison_windows(features, files):
    champion = load_model(str(files["champion"]))
    scorer = ExperimentScorer(SCHEMA, shadow_budget_ms=30_000, window_ms=1)     # every batch closes a window
    scorer.set_plan(plan(files, shadows=["shadow"], canary_share=0.2))
    ready(scorer)
    batch = enriched(features, np.arange(500), topic="t", partition=2)
    out = scorer.score(batch, champion)
    [shadow] = out.experiment.shadow_predictions
    assert shadow.num_rows == 500 and set(shadow.column("role").to_pylist()) == {"shadow"}
    assert shadow.column("prediction_id")[0].as_py() == f"t/2/0/{champion.name}@3"
    later = scorer.score(enriched(features, np.arange(10), topic="t", partition=2, first_offset=500), champion)
    windows = {w["role"]: w for w in out.experiment.comparisons + later.experiment.comparisons
               if w["window_start_ms"] < later.predictions.column("scored_ts")[0].as_py() - 1}
    assert windows["shadow"]["compared"] == 500 and windows["shadow"]["agreement"] == 1.0   # the same model
    assert windows["shadow"]["challenger"] == f"{champion.name}@3" and windows["shadow"]["scorer"] == 0
    canary_events = int(canary_mask(np.arange(500), "fraud/production", 0.2).sum())
    assert windows["canary"]["compared"] == canary_events and windows["canary"]["agreement"] == 1.0
    served_roles = out.predictions.column("role").to_pylist()
    assert served_roles.count("canary") == canary_events and len(served_roles) == 500
    scorer.close()


def test_no_challengers_scores_as_a_one_model_job(features, files):
    champion = load_model(str(files["champion"]))
    scorer = ExperimentScorer(SCHEMA)
    scorer.set_plan(ChallengerPlan((), "x"))
    batch = enriched(features, np.arange(50))
    out = scorer.score(batch, champion)
    assert out.experiment is None and rows(out) == rows(steps.score_batch(batch, champion, SCHEMA))

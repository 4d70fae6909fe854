"""Routes at the steps level (issue #14, routes): ``operators.experiments.RouteScorer`` is what the
Flink scoring operator runs per micro-batch when the job has ``routes:``.

* every event goes to exactly its route's model(s) (first match wins), predictions in input order;
* events no route matches become dead letters ``no_route`` naming the routed fields' values;
* several models on a route: mean / max / vote of their scores;
* each distinct model is loaded once; the job YAML's ``routes:`` are checked when it is read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from connectors import dead_letter as dl
from jobs import demo_data
from jobs.config import JobConfig, load_config
from model_formats import load_model
from operators import steps
from operators.experiments import Condition, Route, RouteScorer, combine_scores
from registry_fixtures import reg, registry_uri_for_test  # noqa: F401 (fixtures)
from test_live_experiment import ENTITIES, SCHEMA, enriched, features, files, plan, ready  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def champion():
    return demo_data.demo_model(ENTITIES)


class Recording:
    """A real model under another name whose scores are scaled by ``factor`` (clipped to [0, 1]);
    it counts the rows it scored."""

    def __init__(self, model, name: str, factor: float = 1.0) -> None:
        self._model, self.name, self.version, self.factor = model, name, "1", factor
        self.schema, self.format = model.schema, model.format
        self.seen: list[str] = []
        self.closed = False

    def validate(self, batch):
        return self._model.validate(batch)

    def predict(self, batch):
        out = self._model.predict(batch)
        self.seen += [None] * batch.num_rows
        scores = pa.array(np.clip(out.column("score").to_numpy() * self.factor, 0, 1))
        return replaced(out, "score", scores)

    def close(self) -> None:
        self.closed = True


def replaced(batch: pa.RecordBatch, name: str, column: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([column if n == name else c for n, c in zip(batch.schema.names, batch.columns)],
                                      names=batch.schema.names)


def small_mid_routes(default: bool) -> list[Route]:
    routes = [Route("small", ("a",), (Condition("amount", "range", (None, 20.0)),)),
              Route("mid", ("b", "c"), (Condition("amount", "range", (20.0, 100.0)),), "mean")]
    if default:
        routes.append(Route("default", ("d",)))
    return routes


def make_scorer(champion, routes, factors=None) -> tuple[RouteScorer, dict[str, Recording], list[str]]:
    base = load_model(champion)
    factors = factors or {"a": 1.0, "b": 0.5, "c": 0.9, "d": 0.7}
    loads: list[str] = []

    def loader(ref):
        loads.append(ref)
        return Recording(base, ref, factors[ref])
    scorer = RouteScorer(routes, SCHEMA, loader=loader)
    return scorer, scorer.models, loads


def test_every_event_goes_to_exactly_its_routes_models_in_input_order(features, champion):
    scorer, models, loads = make_scorer(champion, small_mid_routes(default=True))
    assert loads == ["a", "b", "c", "d"]                 # each model once, when the scorer is made
    batch = enriched(features, np.arange(1, 2001) * 37 % ENTITIES, first_offset=100)
    amounts = np.array(batch.events.column("amount").to_pylist())
    scored = scorer.score(batch)
    expected_route = np.where(amounts < 20, "small", np.where(amounts < 100, "mid", "default"))
    assert {r: int(n) for r, n in zip(*np.unique(expected_route, return_counts=True))} == \
        {k: v for k, v in scorer.route_events.items() if v}
    rows = scored.predictions.to_pylist()
    assert [r["event_id"] for r in rows] == batch.events.column("id").to_pylist()       # input order
    assert [r["prediction_id"] for r in rows] == [f"in/0/{100 + i}" for i in range(2000)]
    names = {"small": "a", "mid": "b+c", "default": "d"}
    assert [r["model"] for r in rows] == [names[r] for r in expected_route]
    assert {r["role"] for r in rows} == {steps.CHAMPION}
    assert len(models["a"].seen) == (expected_route == "small").sum()
    assert len(models["b"].seen) == len(models["c"].seen) == (expected_route == "mid").sum()
    assert len(models["d"].seen) == (expected_route == "default").sum()
    # the scores are those of the route's models, nothing else
    plain = steps.score_batch(batch, load_model(champion), SCHEMA).predictions.column("score").to_numpy()
    want = np.where(expected_route == "small", plain,
                    np.where(expected_route == "mid", (plain * 0.5 + np.clip(plain * 0.9, 0, 1)) / 2,
                             np.clip(plain * 0.7, 0, 1)))
    np.testing.assert_allclose([r["score"] for r in rows], want, rtol=1e-6, atol=1e-9)
    assert scored.batch.events.column("id").to_pylist() == [r["event_id"] for r in rows]   # row-aligned
    assert not scored.dead_letters and scorer.no_route == 0
    loaded = list(models.values())
    scorer.close()
    assert all(m.closed for m in loaded)


def test_events_no_route_matches_are_dead_letters_naming_the_field_values(features, champion):
    scorer, _, _ = make_scorer(champion, small_mid_routes(default=False))
    batch = enriched(features, np.arange(1, 1001), first_offset=0)
    amounts = np.array(batch.events.column("amount").to_pylist())
    scored = scorer.score(batch)
    unrouted = np.flatnonzero(amounts >= 100)
    assert len(unrouted) > 0 and scorer.no_route == len(unrouted)
    letters = sorted(scored.dead_letters, key=lambda d: d.offset)
    assert [d.offset for d in letters] == unrouted.tolist()
    assert {d.reason for d in letters} == {dl.Reason.NO_ROUTE}
    assert all(f"amount={amounts[d.offset]!r}" in d.detail for d in letters), letters[0].detail
    assert scored.predictions.num_rows + len(letters) == 1000                  # every event once
    ids = set(scored.predictions.column("event_id").to_pylist())
    assert not ids & {batch.events.column("id")[i].as_py() for i in unrouted}


def test_a_batch_no_event_of_which_is_routed_keeps_its_earlier_dead_letters(features, champion):
    scorer, _, _ = make_scorer(champion, [Route("web", ("a",), (Condition("id", "regex", r"^web-"),))])
    batch = enriched(features, np.arange(1, 11))
    earlier = batch.split_off(np.arange(10) < 3, dl.Reason.UNKNOWN_ENTITY, "entity not found")
    scored = scorer.score(earlier)
    assert scored.predictions.num_rows == 0
    assert sorted(d.reason.value for d in scored.dead_letters) == ["no_route"] * 7 + ["unknown_entity"] * 3


@pytest.mark.parametrize("combine", ["mean", "max", "vote"])
def test_combined_routes(features, champion, combine):
    routes = [Route("all", ("a", "b", "c"), (), combine)]
    scorer, _, _ = make_scorer(champion, routes, {"a": 1.0, "b": 0.5, "c": 1.5})
    batch = enriched(features, np.arange(1, 501))
    plain = steps.score_batch(batch, load_model(champion), SCHEMA).predictions.column("score").to_numpy()
    matrix = np.column_stack([plain, plain * 0.5, np.clip(plain * 1.5, 0, 1)])
    rows = scorer.score(batch).predictions.to_pylist()
    want = {"mean": matrix.mean(axis=1), "max": matrix.max(axis=1), "vote": (matrix >= 0.5).mean(axis=1)}[combine]
    np.testing.assert_allclose([r["score"] for r in rows], want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(want, combine_scores(matrix, combine))
    assert [r["label"] for r in rows] == (want >= 0.5).astype(int).tolist()
    assert {(r["model"], r["model_version"]) for r in rows} == {("a+b+c", "1+1+1")}


class Picky(Recording):
    """Refuses the event with id ``e5`` (as a model's schema validation refuses a row)."""

    def validate(self, batch):
        from model_formats.base import ValidationResult

        result = self._model.validate(batch)
        keep = np.array([i != "e5" for i in batch.column("id").to_pylist()])
        return ValidationResult(result.valid.filter(pa.array(keep)), np.flatnonzero(keep), np.flatnonzero(~keep),
                                ["id: e5 is refused"] * int((~keep).sum()))


def test_a_combined_route_dead_letters_a_row_any_of_its_models_refuses(features, champion):
    base = load_model(champion)
    scorer = RouteScorer([Route("all", ("a", "b"), ())], SCHEMA,
                         loader=lambda ref: Recording(base, ref) if ref == "a" else Picky(base, ref))
    batch = enriched(features, np.arange(1, 21))
    scored = scorer.score(batch)
    assert scored.predictions.num_rows == 19 and scored.rejected == 1
    assert "e5" not in scored.predictions.column("event_id").to_pylist()
    assert [(d.reason, d.offset, d.detail) for d in scored.dead_letters] == \
        [(dl.Reason.MODEL_INPUT_REJECTED, 5, "id: e5 is refused")]


def test_shadows_and_canary_run_on_the_champions_route_only(features, files):
    """Routes and challengers together: the route naming the champion is scored by the champion's
    scorer (here an ExperimentScorer with a shadow and a 50 % canary, as the Flink operator wires
    it); the canary serves its share of that route's events only, the shadow scores exactly that
    route's events and is compared with the champion on them; the other route is untouched."""
    from operators.experiments import ExperimentScorer, canary_mask

    champion = load_model(str(files["champion"]))
    other = load_model(str(files["champion"]))
    experiment = ExperimentScorer(SCHEMA, window_ms=3_600_000)
    experiment.set_plan(plan(files, shadows=("shadow",), canary_share=0.5))
    ready(experiment)
    loads: list[str] = []

    def loader(ref):
        loads.append(ref)
        return Recording(other, ref, 0.5)
    routes = [Route("small", ("champ",), (Condition("amount", "range", (None, 20.0)),)), Route("rest", ("other",))]
    scorer = RouteScorer(routes, SCHEMA, loader=loader, champion="champ",
                         score_champion=lambda part: experiment.score(part, champion))
    assert loads == ["other"]                    # the champion's route is not loaded by the router
    batch = enriched(features, np.arange(1, 1001) * 53 % ENTITIES, first_offset=10)
    small = np.array(batch.events.column("amount").to_pylist()) < 20
    assert 0 < small.sum() < 1000
    scored = scorer.score(batch)
    rows = scored.predictions.to_pylist()
    assert [r["prediction_id"] for r in rows] == [f"in/0/{10 + i}" for i in range(1000)]       # input order
    assert scorer.route_events == {"small": int(small.sum()), "rest": int((~small).sum())}
    entities = np.array(batch.events.column("entity_id").to_pylist())
    canary = small & canary_mask(entities, "fraud/production", 0.5)
    assert [r["role"] for r in rows] == np.where(canary, "canary", "champion").tolist()
    assert [r["model_version"] for r in rows] == np.where(canary, "2", "1").tolist()
    assert [r["model"] == "other" for r in rows] == (~small).tolist()
    # the shadow scored the champion's route, nothing else, and never reached the served output
    shadow_rows = scored.experiment.shadow_predictions
    assert len(shadow_rows) == 1
    offsets = (np.flatnonzero(small) + 10).tolist()
    assert shadow_rows[0].column("prediction_id").to_pylist() == [f"in/0/{o}/demo-fraud-gbm@3" for o in offsets]
    assert set(shadow_rows[0].column("role").to_pylist()) == {"shadow"}
    rows_for_files, file_offsets = scored.experiment.shadow_rows()
    assert file_offsets.tolist() == offsets and rows_for_files.num_rows == len(offsets)
    windows = {w["role"]: w for w in experiment.windows.close_due(float("inf"))}
    assert windows["shadow"]["compared"] == int(small.sum())
    assert windows["canary"]["compared"] == int(canary.sum())
    assert windows["shadow"]["champion"] == "demo-fraud-gbm@1"
    experiment.close()
    scorer.close()


# -- the job YAML ---------------------------------------------------------------------------------

def config(tmp_path: Path, text: str) -> JobConfig:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return load_config(path)


ROUTES_YAML = """
routes:
  - name: small
    when: {field: amount, max: 20}
    model: models/small.onnx
  - name: web
    when: [{field: id, regex: "^web-"}, {field: entity_id, in: [1, 2, 3]}]
    models: [models/a.onnx, models/b.onnx]
    combine: vote
default_route: {model: models/rest.onnx}
"""


def test_routes_in_the_job_yaml_become_the_scorers_routes(tmp_path):
    cfg = config(tmp_path, ROUTES_YAML)
    plan = cfg.route_plan()
    assert [r.name for r in plan.routes] == ["small", "web", "default"]
    assert plan.routes[0].when == (Condition("amount", "range", (None, 20.0)),)
    assert plan.routes[1].when == (Condition("id", "regex", "^web-"), Condition("entity_id", "in", (1, 2, 3)))
    assert plan.routes[1].models == ("models/a.onnx", "models/b.onnx") and plan.routes[1].combine == "vote"
    assert plan.routes[2].when == () and plan.routes[2].models == ("models/rest.onnx",)
    again = load_config(cfg.to_yaml(tmp_path / "again.yaml"))       # what the CLI hands the workers
    assert again.route_plan() == plan
    assert JobConfig().route_plan() is None


@pytest.mark.parametrize("text,message", [
    ("routes: [{name: r, when: {field: amout, min: 1}, model: m.onnx}]", "unknown field 'amout'"),
    ("routes: [{name: r, when: {field: id, regex: '(['}, model: m.onnx}]", "bad regex"),
    ("routes: [{name: r, when: {field: id, equals: a}, models: [a.onnx, b.onnx], combine: median}]", "combine"),
    ("routes: [{name: r, when: {field: id, min: 1}, model: m.onnx}]", "min/max needs a numeric field"),
    ("routes: [{name: r, when: {field: id, equals: a, regex: b}, model: m.onnx}]", "exactly one of"),
    ("routes: [{name: r, when: {field: id, equals: a}}]", "needs one of model"),
    ("routes: [{name: r, when: {field: id, equals: a}, model: fraud}]", "needs model.registry"),
    ("routes: [{name: r, when: {field: id, equals: a}, model: a.onnx}, {name: r, when: {field: id, equals: b}, "
     "model: b.onnx}]", "distinct"),
    ("routes: [{name: 'r s', when: {field: id, equals: a}, model: a.onnx}]", "pattern"),
    ("default_route: {model: m.onnx}", "give routes too"),
    ("routes: [{name: r, when: {field: id, equals: a}, model: a.onnx}]\nmodel: {shadows: [s.onnx]}",
     r"a route must serve it \(`model: models/demo.onnx`\)"),
    ("routes: [{name: r, when: {field: id, equals: a}, model: a.onnx}]\n"
     "model: {path: c.onnx, canary: {path: k.onnx, share: 0.1}}", r"a route must serve it \(`model: c.onnx`\)"),
    ("routes: [{name: r, when: {field: id, equals: a}, model: a.onnx}]\n"
     "model: {registry: 'sqlite:////tmp/none.db', name: fraud}", r"must serve the followed deployment: `model: fraud`"),
])
def test_bad_routes_are_refused_when_the_config_is_read(tmp_path, text, message):
    with pytest.raises(ValidationError, match=message):
        config(tmp_path, text)


def test_a_route_serving_the_champion_carries_its_challengers(tmp_path):
    cfg = config(tmp_path, "model: {path: c.onnx, shadows: [s.onnx], canary: {path: k.onnx, share: 0.1}}\n"
                           "routes: [{name: card, when: {field: id, regex: '^c'}, model: c.onnx},\n"
                           "         {name: rest, when: {field: id, regex: '.'}, models: [c.onnx, o.onnx]}]")
    plan = cfg.route_plan()
    assert plan.champion == "c.onnx" and cfg.runs_experiments
    again = load_config(cfg.to_yaml(tmp_path / "again.yaml"))
    assert again.route_plan() == plan
    # without challengers a route may still serve model.path: it is then reloaded like the champion
    plain = config(tmp_path, "model: {path: c.onnx}\nroutes: [{name: r, when: {field: id, equals: a}, model: c.onnx}]")
    assert plain.route_plan().champion == "c.onnx" and not plain.runs_experiments
    assert config(tmp_path, ROUTES_YAML).route_plan().champion is None


def test_preflight_checks_every_routed_model(tmp_path, champion):
    from jobs.errors import UserError
    from jobs.preflight import check_routes

    cfg = config(tmp_path, f"routes: [{{name: a, when: {{field: amount, max: 5}}, model: {champion}}}]\n"
                           f"default_route: {{name: rest, models: [{champion}, {tmp_path}/gone.onnx]}}")
    with pytest.raises(UserError, match=r"model file not found: .*gone.onnx \(route rest\)"):
        check_routes(cfg, say=lambda _: None, features=lambda: {})
    cfg.default_route = None
    with pytest.raises(UserError, match=r"demo-fraud-gbm.* \(route a\) does not fit the events and features"):
        check_routes(cfg, say=lambda _: None, features=lambda: {})        # a store without the model's features
    names = load_model(champion).schema.input_names
    check_routes(cfg, say=lambda _: None, features=lambda: {n: "float" for n in names})


def test_a_route_model_named_by_the_registry_is_its_champion_in_model_env(reg, registry_uri_for_test, tmp_path):
    from jobs.config import RoutePlan
    from registry import RegistryError
    from registry_fixtures import model_copy

    who = dict(actor="tester@host", reason="test")
    for _ in range(2):
        reg.register_model("fraud", str(model_copy(tmp_path, "logreg.onnx")), **who)
    reg.promote("fraud", 1, "integration", **who)
    reg.promote("fraud", 2, "integration", **who)
    cfg = config(tmp_path, f"model: {{registry: '{registry_uri_for_test}', name: fraud, env: integration}}\n"
                           "routes: [{name: r, when: {field: amount, min: 0}, model: fraud}]")
    plan = cfg.route_plan()
    assert (plan.registry, plan.env) == (registry_uri_for_test, "integration")
    model = plan.load("fraud", {})
    assert (model.name, model.version) == ("fraud", "2")
    model.close()
    with pytest.raises(RegistryError, match="no deployment of 'churn'"):
        plan.load("churn", {})


def test_a_route_follows_its_registered_model_while_it_scores(reg, registry_uri_for_test, features, tmp_path):
    """A version promoted while the routes score takes over its route and the combination that
    uses it, between two batches: each batch is scored and named by one version, never two."""
    import time

    who = dict(actor="tester@host", reason="test")
    v1, v2 = demo_data.demo_model(ENTITIES), demo_data.demo_model(ENTITIES, version="2")
    reg.register_model("fraud", str(v1), **who)
    reg.register_model("fraud", str(v2), **who)
    reg.register_model("churn", str(v1), **who)
    reg.promote("fraud", 1, "integration", **who)
    reg.promote("churn", 1, "integration", **who)
    cfg = config(tmp_path, f"model: {{registry: '{registry_uri_for_test}', name: fraud, env: integration, "
                           "follow_interval_s: 0.2}\n"
                           "routes: [{name: single, when: {field: amount, max: 50}, model: fraud}]\n"
                           "default_route: {name: both, models: [fraud, churn], combine: mean}")
    scorer = cfg.route_plan().scorer(SCHEMA)
    try:
        batch = enriched(features, np.arange(400) % ENTITIES)
        amounts = np.asarray(batch.events.column("amount").to_numpy(zero_copy_only=False))
        single = amounts < 50

        def served(scored) -> tuple[set, np.ndarray]:
            table = scored.predictions
            return (set(zip(table.column("model_version").to_pylist(), single.tolist())),
                    np.asarray(table.column("score").to_numpy(zero_copy_only=False)))

        before, scores_v1 = served(scorer.score(batch))
        assert before == {("1", True), ("1+1", False)}
        reg.promote("fraud", 2, "integration", **who)
        deadline, after = time.monotonic() + 60, before
        while time.monotonic() < deadline and after == before:
            time.sleep(0.2)
            after, scores = served(scorer.score(batch))
            assert after in (before, {("2", True), ("2+1", False)}), f"one batch scored by two versions: {after}"
        assert after == {("2", True), ("2+1", False)}, f"the route kept serving version 1 for 60 s: {after}"
        want_v2 = load_model(v2).predict(batch.events).column("score").to_numpy()
        want_v1 = load_model(v1).predict(batch.events).column("score").to_numpy()
        np.testing.assert_allclose(scores[single], want_v2[single], rtol=1e-6)
        np.testing.assert_allclose(scores[~single], ((want_v2 + want_v1) / 2)[~single], rtol=1e-6)
        np.testing.assert_allclose(scores_v1[single], want_v1[single], rtol=1e-6)
        serving = reg.deployment("fraud", "integration")
        assert serving.champion.version == 2
    finally:
        scorer.close()

"""Shadow and canary roles of a deployment (issue #14) on SQLite and PostgreSQL: promote a version
as a shadow (0..n) or the canary (0..1, with a share), end it (`retire --env --role`), every change
a new revision with its audit entry; a follower (RegistrySource) hands the scorer the full plan
(shadows, the canary and its share, the deployment as salt); comparison windows reach the registry
through the follower."""
from __future__ import annotations

import json
import time

import pytest

from jobs.cli import main
from model_formats.reloading import ReloadingModel
from registry import PolicyRefused, RegistryError
from registry.follow import RegistrySource
from registry_fixtures import model_copy, reg, registry_uri_for_test  # noqa: F401 - fixtures
from test_registry_gate import window

WHO = dict(actor="tester@host", reason="test")
ENV = "integration"


@pytest.fixture
def four(reg, tmp_path):
    for _ in range(4):
        reg.register_model("fraud", str(model_copy(tmp_path, "logreg.onnx")), **WHO)
    reg.promote("fraud", 1, ENV, **WHO)
    return reg


def test_shadows_and_a_canary_beside_the_champion(four):
    reg = four
    d = reg.promote("fraud", 2, ENV, role="shadow", **WHO)
    d = reg.promote("fraud", 3, ENV, role="shadow", **WHO)
    assert [s.version for s in d.shadows] == [2, 3] and d.champion.version == 1 and d.revision == 3
    d = reg.promote("fraud", 4, ENV, role="canary", share=0.1, **WHO)
    assert (d.canary.version, d.canary_share, d.revision) == (4, 0.1, 4)
    d = reg.promote("fraud", 4, ENV, role="canary", share=0.25, **WHO)         # a new share
    assert (d.canary.version, d.canary_share) == (4, 0.25)
    d = reg.promote("fraud", 3, ENV, role="canary", share=0.05, **WHO)         # replaces the canary, leaves shadows
    assert (d.canary.version, d.canary_share, [s.version for s in d.shadows]) == (3, 0.05, [2])
    d = reg.end_role("fraud", 2, ENV, "shadow", actor="ops", reason="enough evidence")
    assert d.shadows == [] and d.canary.version == 3
    d = reg.promote("fraud", 3, ENV, role="canary", share=0, **WHO)            # share 0 ends the canary
    assert d.canary is None
    history = [(e.action, e.from_version, e.to_version, e.revision, e.detail.get("role"))
               for e in reversed(reg.history("fraud", env=ENV))][1:]
    assert history == [("promote-shadow", 1, 2, 2, "shadow"), ("promote-shadow", 1, 3, 3, "shadow"),
                       ("promote-canary", 1, 4, 4, "canary"), ("promote-canary", 1, 4, 5, "canary"),
                       ("promote-canary", 1, 3, 6, "canary"), ("end-shadow", 2, None, 7, "shadow"),
                       ("end-canary", 3, None, 8, "canary")]
    assert reg.history("fraud", env=ENV)[2].detail["replaced_canary"] == 4


def test_refusals_and_mistakes(four, tmp_path):
    reg = four
    with pytest.raises(PolicyRefused, match="is the champion"):
        reg.promote("fraud", 1, ENV, role="shadow", **WHO)
    with pytest.raises(PolicyRefused, match="no champion in qa"):
        reg.promote("fraud", 2, "qa", role="shadow", **WHO)
    reg.promote("fraud", 2, ENV, role="shadow", **WHO)
    with pytest.raises(RegistryError, match="already a shadow"):
        reg.promote("fraud", 2, ENV, role="shadow", **WHO)
    with pytest.raises(RegistryError, match="between 0 and 1"):
        reg.promote("fraud", 3, ENV, role="canary", share=1.5, **WHO)
    with pytest.raises(RegistryError, match="not a shadow"):
        reg.end_role("fraud", 3, ENV, "shadow", **WHO)
    with pytest.raises(PolicyRefused, match="serving"):
        reg.retire("fraud", 2, **WHO)                     # a shadow is serving: end it first
    other = reg.register_model("fraud", str(model_copy(tmp_path, "forest.onnx")), **WHO)
    reg.promote("fraud", 3, ENV, role="canary", share=0.2, **WHO)
    # a shadow promoted to champion leaves its shadow role; the old champion is not kept as anything
    d = reg.promote("fraud", 2, ENV, **WHO)
    assert d.champion.version == 2 and d.shadows == [] and d.canary.version == 3
    assert other.version == 5 and reg.deployment("fraud", ENV).revision == d.revision


def test_cli_promote_role_and_retire_role(registry_uri_for_test, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMSCORE_REGISTRY", registry_uri_for_test)
    monkeypatch.setenv("STREAMSCORE_CACHE", str(tmp_path / "cache"))

    def cli(*argv) -> dict:
        code = main([*argv, "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    assert main(["registry", "init"]) == 0
    capsys.readouterr()
    for _ in range(3):
        cli("registry", "register", "fraud", str(model_copy(tmp_path)), "--reason", "r")
    cli("registry", "promote", "fraud", "1", "--env", "integration", "--reason", "first")
    d = cli("registry", "promote", "fraud", "2", "--env", "integration", "--role", "shadow", "--reason", "watch")
    assert [s["version"] for s in d["shadows"]] == [2]
    d = cli("registry", "promote", "fraud", "3", "--env", "integration", "--role", "canary", "--share", "0.1",
            "--reason", "10 %")
    assert (d["canary"]["version"], d["canary_share"]) == (3, 0.1)
    d = cli("registry", "retire", "fraud", "2", "--env", "integration", "--role", "shadow", "--reason", "done")
    assert d["shadows"] == [] and d["canary"]["version"] == 3
    capsys.readouterr()
    assert main(["registry", "promote", "fraud", "2", "integration", "--env", "integration", "--reason", "x"]) != 0
    assert "name the environment once" in capsys.readouterr().err
    assert main(["registry", "retire", "fraud", "3", "--role", "canary", "--reason", "x"]) != 0
    assert "--env and --role" in capsys.readouterr().err


def test_the_follower_hands_the_scorer_the_plan_and_records_comparisons(four, tmp_path):
    reg = four
    reg.promote("fraud", 2, ENV, role="shadow", **WHO)
    source = RegistrySource(reg.uri, "fraud", ENV, interval_s=0.1, cache_dir=tmp_path / "host", actor="job:t")
    model = ReloadingModel(source, check_interval_s=0)
    try:
        plan = source.challengers()
        assert plan.salt == f"fraud/{ENV}" and [(c.role, c.candidate.version) for c in plan.challengers] == \
            [("shadow", "2")]
        assert plan.challengers[0].candidate.path.exists() and plan.canary is None
        reg.promote("fraud", 3, ENV, role="canary", share=0.3, **WHO)
        deadline = time.monotonic() + 30
        while source.challengers() is plan:
            assert time.monotonic() < deadline, "the follower did not hand over the new plan"
            time.sleep(0.05)
        plan = source.challengers()
        assert plan.canary.candidate.version == "3" and plan.canary.share == 0.3 and len(plan.shadows) == 1
        assert model.model.version == "1"                 # the champion stayed
        source.record_comparison(window(0, 100, 0.0, seed=1), "shadow")
        deadline = time.monotonic() + 30
        while not reg.comparisons("fraud", ENV, 2):
            assert time.monotonic() < deadline, "the comparison window did not reach the registry"
            time.sleep(0.05)
        assert reg.comparison_evidence("fraud", ENV, 2)["compared"] == 100
    finally:
        model.close()


def test_each_scorer_of_a_job_records_its_own_window(four):
    reg = four
    w = window(10_000, 100, 0.0, seed=2)
    assert reg.record_comparison("fraud", ENV, {**w, "scorer": 0})
    assert reg.record_comparison("fraud", ENV, {**w, "scorer": 1})
    assert not reg.record_comparison("fraud", ENV, {**w, "scorer": 1})        # replayed
    assert reg.comparison_evidence("fraud", ENV, 2)["compared"] == 200

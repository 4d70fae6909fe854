"""Comparison windows in the registry and gated promotion (SQLite and PostgreSQL): windows are
stored once (a replayed window is not counted twice), the evidence adds them up, and a gate refuses
a challenger until its recorded comparison meets it; both decisions land in the audit log with
the numbers they used."""
from __future__ import annotations

import numpy as np
import pytest

from operators.experiments import WindowComparison
from registry import Gate, PolicyRefused, RegistryError
from registry_fixtures import model_copy, reg, registry_uri_for_test  # noqa: F401 - fixtures

WHO = dict(actor="tester@host", reason="test")


def window(start_ms: int, n: int, flip_share: float, seed: int) -> dict:
    """A comparison window of fraud@1 (champion) and fraud@2 on ``n`` events, where the challenger
    flips the label of about ``flip_share`` of them."""
    rng = np.random.default_rng(seed)
    champion = rng.uniform(0, 1, n)
    challenger = champion.copy()
    flip = rng.uniform(0, 1, n) < flip_share
    challenger[flip] = 1 - challenger[flip]
    w = WindowComparison("fraud@1", "fraud@2", window_start_ms=start_ms)
    w.add(champion, (champion >= 0.5).astype(int), challenger, (challenger >= 0.5).astype(int), 1.0, 2.0)
    return w.summary()


@pytest.fixture
def two_versions(reg, tmp_path):
    reg.register_model("fraud", str(model_copy(tmp_path, "logreg.onnx")), **WHO)
    reg.register_model("fraud", str(model_copy(tmp_path, "logreg.onnx")), **WHO)
    for env in ("integration", "qa", "production"):
        reg.promote("fraud", 1, env, **WHO)
    for env in ("integration", "qa"):
        reg.promote("fraud", 2, env, **WHO)
    return reg


def test_windows_are_stored_once_and_the_evidence_adds_them_up(two_versions):
    reg = two_versions
    windows = [window(10_000 * i, 1000, 0.01, seed=i) for i in range(3)]
    assert all(reg.record_comparison("fraud", "production", w) for w in windows)
    assert not reg.record_comparison("fraud", "production", windows[1])      # a replayed window
    stored = reg.comparisons("fraud", "production", 2)
    assert [w["window_start_ms"] for w in stored] == [0, 10_000, 20_000]
    evidence = reg.comparison_evidence("fraud", "production", 2)
    assert evidence["compared"] == 3000 and evidence["windows"] == 3
    agreed = sum(w["agreement"] * w["compared"] for w in windows)
    assert evidence["agreement"] == pytest.approx(agreed / 3000)
    assert reg.comparison_evidence("fraud", "qa", 2)["compared"] == 0
    with pytest.raises(RegistryError, match="not a version of fraud"):
        reg.record_comparison("fraud", "production", {**windows[0], "challenger": "churn@2"})


def test_a_gate_refuses_until_the_comparison_meets_it_and_both_decisions_are_audited(two_versions):
    reg = two_versions
    gate = Gate(min_agreement=0.98, min_compared=5000, max_psi=0.1)
    with pytest.raises(PolicyRefused, match="0 events compared, the gate needs 5,000"):
        reg.promote("fraud", 2, "production", gate=gate, **WHO)
    for i in range(3):                                        # 3,000 events agreeing ~99 %
        reg.record_comparison("fraud", "production", window(10_000 * i, 1000, 0.01, seed=i))
    with pytest.raises(PolicyRefused, match="3,000 events compared") as refused:
        reg.promote("fraud", 2, "production", gate=gate, **WHO)
    assert "agreement" not in str(refused.value)              # that part of the gate was met
    reg.record_comparison("fraud", "production", window(90_000, 1000, 0.10, seed=9))   # a bad window
    with pytest.raises(PolicyRefused, match=r"label agreement 0\.9[0-7]\d*, the gate needs 0\.98"):
        reg.promote("fraud", 2, "production", gate=gate, **WHO)
    for i in range(10, 20):                                   # 10,000 more events agreeing ~99.5 %
        reg.record_comparison("fraud", "production", window(10_000 * i, 1000, 0.005, seed=i))
    d = reg.promote("fraud", 2, "production", gate=gate, **WHO)
    assert d.champion.version == 2
    entries = [e for e in reg.history("fraud", "production") if e.to_version == 2]
    assert [e.action for e in entries][:1] == ["promote"]
    accepted = entries[0].detail
    assert accepted["gate"] == {"min_agreement": 0.98, "min_compared": 5000, "max_psi": 0.1}
    assert accepted["evidence"]["compared"] == 14_000 and accepted["evidence"]["agreement"] >= 0.98
    refusals = [e for e in entries if e.action == "promote-refused"]
    assert len(refusals) == 3 and all("evidence" in e.detail for e in refusals)


def test_gate_failures_name_every_unmet_condition():
    gate = Gate(min_agreement=0.98, min_compared=100, max_psi=0.1)
    assert gate.failures({"compared": 500, "agreement": 0.99, "psi": 0.01}) == []
    why = gate.failures({"compared": 50, "agreement": 0.9, "psi": 0.5})
    assert len(why) == 3 and "PSI 0.5000" in why[2]
    assert "agreement none" in gate.failures({"compared": 0, "agreement": None})[1]


def test_report_and_gated_promote_through_the_cli(two_versions, registry_uri_for_test, tmp_path, capsys,
                                                  monkeypatch):
    import json

    from jobs.cli import main

    monkeypatch.setenv("STREAMSCORE_REGISTRY", registry_uri_for_test)
    monkeypatch.setenv("STREAMSCORE_CACHE", str(tmp_path / "cache"))
    assert main(["registry", "report", "fraud", "--env", "production"]) == 1
    assert "no comparison recorded for fraud in production" in capsys.readouterr().err
    for i in range(4):
        two_versions.record_comparison("fraud", "production", window(10_000 * i, 500, 0.01, seed=i))
    page = tmp_path / "report.html"
    assert main(["registry", "report", "fraud", "--env", "production", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "fraud@1" in out and "fraud@2" in out and "2,000" in out and f"report written to {page}" in out
    assert "Flip matrix" in page.read_text() and "<script" not in page.read_text()
    assert main(["registry", "report", "fraud", "--env", "production", "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals[0]["compared"] == 2000 and totals[0]["windows"] == 4
    gated = ["registry", "promote", "fraud", "2", "production", "--reason", "shadow agreed",
             "--require-agreement", "0.98", "--min-compared", "5000"]
    assert main(gated) == 1
    assert "2,000 events compared, the gate needs 5,000" in capsys.readouterr().err
    assert main(gated[:-2] + ["--min-compared", "2000"]) == 0
    assert two_versions.deployment("fraud", "production").champion.version == 2

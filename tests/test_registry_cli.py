"""`streamscore registry …` and `streamscore features publish` on SQLite and PostgreSQL, through
the real command-line entry point (jobs.cli.main, in-process)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobs.cli import main
from registry_fixtures import (  # noqa: F401 - fixtures
    features_table, model_copy, registry_uri_for_test,
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def cli_env(registry_uri_for_test, tmp_path, monkeypatch):
    """STREAMSCORE_REGISTRY and STREAMSCORE_CACHE point at this test's registry and cache."""
    monkeypatch.setenv("STREAMSCORE_REGISTRY", registry_uri_for_test)
    monkeypatch.setenv("STREAMSCORE_CACHE", str(tmp_path / "cache"))
    return registry_uri_for_test


def test_register_promote_show_history_rollback(cli_env, tmp_path, capsys):
    assert run(capsys, "registry", "init")[0] == 0
    v1 = cli_json(capsys, "registry", "register", "fraud", str(model_copy(tmp_path)), "--reason", "first",
                  "--actor", "ana", "--metadata", "auc=0.91", "--metadata", "run=r-17")
    assert (v1["version"], v1["metadata"]["auc"], v1["metadata"]["run"]) == (1, 0.91, "r-17")
    source = tmp_path / "customers.parquet"
    import pyarrow.parquet as pq
    pq.write_table(features_table(40), source)
    snap = cli_json(capsys, "features", "publish", str(source), "--name", "customers", "--to", str(tmp_path / "durable"),
                    "--reason", "nightly")
    assert (snap["name"], snap["version"], snap["row_count"]) == ("customers", 1, 40)
    assert snap["uri"].startswith(str(tmp_path / "durable" / "customers"))
    v2 = cli_json(capsys, "registry", "register", "fraud", str(model_copy(tmp_path, "forest.onnx")), "--reason",
                  "retrained", "--feature-set", "customers")
    assert v2["feature_set"] == {"name": "customers", "fingerprint": snap["schema_fingerprint"]}

    d = cli_json(capsys, "registry", "promote", "fraud", "1", "integration", "--reason", "smoke")
    assert (d["revision"], d["champion"]["version"], d["features"]) == (1, 1, None)
    d = cli_json(capsys, "registry", "promote", "fraud", "2", "integration", "--features", "customers@1",
                 "--reason", "better auc")
    assert (d["revision"], d["champion"]["version"], d["features"]["name"]) == (2, 2, "customers")

    shown = cli_json(capsys, "registry", "show", "fraud", "--env", "integration")
    assert shown["champion"]["sha256"] == v2["sha256"] and shown["features"]["uri"] == snap["uri"]
    # from a prediction's lineage (model fraud, model_version 2, features customers@1) back to the artifacts
    assert cli_json(capsys, "registry", "show", "fraud/2")["sha256"] == v2["sha256"]
    assert cli_json(capsys, "registry", "show", "customers@1")["checksum"] == snap["checksum"]

    code, out, _ = run(capsys, "registry", "list")
    assert code == 0 and "fraud" in out and "integration (r2)" in out
    code, out, _ = run(capsys, "registry", "show", "fraud/2")
    assert code == 0 and v2["sha256"] in out and "velocity" in out

    d = cli_json(capsys, "registry", "rollback", "fraud", "integration", "--reason", "drift")
    assert (d["revision"], d["champion"]["version"], d["features"]) == (3, 1, None)
    history = cli_json(capsys, "registry", "history", "fraud", "--env", "integration")
    assert [(h["action"], h["from_version"], h["to_version"]) for h in history] == [
        ("rollback", 2, 1), ("promote", 1, 2), ("promote", None, 1)]
    code, out, _ = run(capsys, "registry", "history", "fraud")
    assert code == 0 and "rollback" in out and "drift" in out and "register" in out

    code, _, err = run(capsys, "registry", "retire", "fraud", "1", "--reason", "old")
    assert code == 1 and "serving (champion in integration)" in err
    assert cli_json(capsys, "registry", "retire", "fraud", "2", "--reason", "superseded")["retired"] is True
    code, _, err = run(capsys, "registry", "promote", "fraud", "2", "integration", "--reason", "again")
    assert code == 1 and "version 2 is retired" in err
    code, out, _ = run(capsys, "registry", "list", "--snapshots")
    assert code == 0 and "customers@1" in out


def test_typos_and_refusals_are_one_line_errors(cli_env, tmp_path, capsys):
    run(capsys, "registry", "init")
    run(capsys, "registry", "register", "fraud", str(model_copy(tmp_path)), "--reason", "first")
    code, out, err = run(capsys, "registry", "promote", "frud", "1", "integration", "--reason", "x")
    assert code == 1 and err.count("\n") == 1 and "did you mean fraud?" in err and "Traceback" not in err
    code, _, err = run(capsys, "registry", "promote", "fraud", "9", "integration", "--reason", "x")
    assert code == 1 and "no version of fraud 9 (existing: 1)" in err
    code, _, err = run(capsys, "registry", "promote", "fraud", "1", "qa", "--reason", "x")
    assert code == 1 and "requires the version to have been champion in integration" in err
    code, _, err = run(capsys, "registry", "show", "fraud", "--env", "prod")
    assert code == 1 and "did you mean production?" in err
    code, _, err = run(capsys, "registry", "promote", "fraud", "1", "integration", "--reason", "x",
                       "--event-fields", "amount:double,age_days:double")
    assert code == 1 and "missing inputs velocity, ratio" in err
    history = cli_json(capsys, "registry", "history", "fraud")
    assert [h["action"] for h in history[:2]] == ["promote-refused", "promote-refused"]
    code, _, err = run(capsys, "registry", "history", "frauds")
    assert code == 1 and "did you mean fraud?" in err


def test_init_configures_environments(cli_env, capsys):
    code, out, _ = run(capsys, "registry", "init", "--env", "dev", "--env", "prod:gated;events=amount:double,hour")
    assert code == 0 and "dev -> prod (gated)" in out
    envs = cli_json(capsys, "registry", "init")["environments"]
    assert envs == [{"name": "dev", "position": 0, "requires_previous_champion": False, "event_fields": None},
                    {"name": "prod", "position": 1, "requires_previous_champion": True,
                     "event_fields": {"amount": "double", "hour": "any"}}]
    code, _, err = run(capsys, "registry", "init", "--env", "dev:sometimes")
    assert code == 1 and "neither open nor gated" in err


def test_help_has_examples_and_starts_without_heavy_imports():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "registry", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "examples:" in out and "streamscore registry promote fraud 2 integration" in out
    for action in ("init", "register", "list", "show", "promote", "rollback", "retire", "history"):
        assert action in out
    probe = ("import sys, jobs.cli; jobs.cli.build_parser(); "
             "print(sorted(m for m in ('sqlalchemy', 'pyarrow', 'onnxruntime', 'mlflow') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"

"""`streamscore features load|serve|get`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.csv as csv
import pyarrow.parquet as pq

from connectors.feature_store import open_store
from feature_store_fixtures import feature_table, plasma_server, short_tmpdir  # noqa: F401
from jobs.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_and_get(plasma_server, tmp_path, capsys):
    table = feature_table(1000, n_features=3)
    pq.write_table(table, tmp_path / "f.parquet")
    uri = plasma_server.uri("cli")
    assert main(["features", "load", str(tmp_path / "f.parquet"), "--key", "entity_id", "--store", uri]) == 0
    assert "published version 1" in capsys.readouterr().err
    assert main(["features", "get", "--store", uri, "5", "123456"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"key": 5, "found": True, "version": "1",
                        "features": {"f0": 5.0, "f1": 6.0, "f2": 7.0}}
    assert lines[1]["key"] == 123456 and lines[1]["found"] is False

    csv.write_csv(feature_table(10, n_features=2, scale=2.0), tmp_path / "g.csv")
    # other features than the served version's: refused unless asked for, version 1 keeps serving
    assert main(["features", "load", str(tmp_path / "g.csv"), "--store", uri]) == 1
    assert "refusing to replace the features" in capsys.readouterr().err
    assert main(["features", "get", "--store", uri, "3"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1"
    assert main(["features", "load", str(tmp_path / "g.csv"), "--store", uri, "--replace-schema"]) == 0
    capsys.readouterr()
    assert main(["features", "get", "--store", uri, "3"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["version"] == "2" and line["features"] == {"f0": 6.0, "f1": 7.0}


def test_load_errors_are_reported(plasma_server, tmp_path, capsys):
    pq.write_table(feature_table(10), tmp_path / "f.parquet")
    assert main(["features", "load", str(tmp_path / "f.parquet"), "--key", "nope",
                 "--store", plasma_server.uri()]) == 1
    assert "no key column 'nope'" in capsys.readouterr().err
    assert main(["features", "get", "--store", f"plasma://{short_tmpdir()}/x.sock", "1"]) == 1
    assert "feature_store_unavailable" in capsys.readouterr().err


def test_serve_runs_until_sigterm(tmp_path):
    pq.write_table(feature_table(2000, n_features=4), tmp_path / "f.parquet")
    sock = os.path.join(short_tmpdir(), "plasma.sock")
    uri = f"plasma://{sock}?name=served&memory=64MiB"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "features", "serve", "--store", uri,
                             "--load", str(tmp_path / "f.parquet")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        with open_store(uri) as store:
            m, found = store.lookup_numpy(np.array([1999]))
            assert found.all() and m[0, 3] == 2002.0
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert rc == 0
    assert not os.path.exists(sock)

"""The command line as an operator meets it (issue #17), driven as a user would: subprocesses and
their console output. No Flink here (the end-to-end run is tests/test_run_it_yourself.py):
light commands import no engine, checks before submitting fail with one line, `dev up` starts
and stops a broker and a feature store and leaves nothing behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal

import pytest
import yaml
from confluent_kafka.admin import AdminClient

from console import Console, alive, streamscore, wait_gone

HEAVY = ("pyflink", "pyarrow", "onnxruntime", "apache_beam", "numpy", "confluent_kafka", "pydantic")


def imported(*args: str, cwd) -> set[str]:
    """Top-level modules a command imports (python -X importtime), and the command's result."""
    result = streamscore(*args, cwd=cwd, env={"PYTHONPROFILEIMPORTTIME": "1"})
    modules = {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)",
                                                             result.stderr, re.M)}
    return modules, result


def one_error_line(result) -> str:
    """The command failed with no traceback, and its last output line is the error."""
    assert result.returncode != 0, f"expected a failure, got 0:\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("streamscore "), result.stderr
    return lines[-1]


def write_job(tmp_path, stack=None, **sections) -> str:
    cfg = {}
    if stack is not None:
        cfg = {"kafka": {"bootstrap_servers": stack.broker.bootstrap_servers, "input_topic": "cli-events",
                         "output_topic": "cli-predictions", "dead_letter_topic": "cli-dlq"},
               "features": {"store": stack.feature_uri}, "model": {"path": str(stack.model_path)}}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_help_and_light_commands_import_no_engine(tmp_path, stack):
    for args in (["--help"], ["run", "--help"], ["dev", "up", "--help"], ["features", "get", "--help"]):
        modules, result = imported(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "usage: streamscore" in result.stdout
        assert not modules & set(HEAVY), f"`streamscore {' '.join(args)}` imported {sorted(modules & set(HEAVY))}"

    modules, result = imported("features", "get", "1", "--store", stack.feature_uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[0])["found"] is True
    assert not modules & {"pyflink", "onnxruntime", "apache_beam"}, sorted(modules & {"pyflink", "onnxruntime", "apache_beam"})

    job = write_job(tmp_path, features={"store": stack.feature_uri})
    modules, result = imported("features", "get", "1", "--config", job, cwd=tmp_path)
    assert result.returncode == 0 and json.loads(result.stdout)["found"] is True, result.stderr[-2000:]
    assert not modules & {"pyflink", "onnxruntime", "apache_beam", "pydantic"}, sorted(modules)

    modules, result = imported("models", "inspect", str(stack.model_path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not modules & {"pyflink", "apache_beam"}, sorted(modules & {"pyflink", "apache_beam"})


def test_config_typo_is_one_line_and_debug_keeps_the_traceback(tmp_path):
    job = write_job(tmp_path, kafka={"bootstrap_server": "127.0.0.1:9092"}, flink={"paralelism": 2})
    line = one_error_line(streamscore("run", "--config", job, cwd=tmp_path))
    assert "unknown key kafka.bootstrap_server (did you mean kafka.bootstrap_servers?)" in line
    assert "unknown key flink.paralelism (did you mean flink.parallelism?)" in line
    assert job in line

    debug = streamscore("--debug", "run", "--config", job, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "bootstrap_server" in debug.stderr


def test_missing_model_fails_before_submitting_naming_the_file(tmp_path):
    job = write_job(tmp_path, model={"path": "models/fraud-v3.onnx"})
    result = streamscore("run", "--config", job, cwd=tmp_path, timeout=60)
    line = one_error_line(result)
    assert line == "streamscore run: model file not found: models/fraud-v3.onnx (model.path)"
    assert not (tmp_path / "streamscore-logs" / "job.log").exists(), "a job was started anyway"


def test_unknown_topic_is_one_line(tmp_path, stack):
    stack.job_config("cli")                                   # creates cli-events, cli-predictions, cli-dlq
    job = write_job(tmp_path, stack, kafka={"input_topic": "cli-evnets"})
    line = one_error_line(streamscore("run", "--config", job, cwd=tmp_path, timeout=120))
    assert "unknown topic 'cli-evnets' (kafka.input_topic)" in line and "cli-events" in line
    topics = AdminClient({"bootstrap.servers": stack.broker.bootstrap_servers}).list_topics(timeout=10).topics
    assert "cli-evnets" not in topics, "the check created the topic it looked for"


def test_model_that_does_not_fit_the_events_is_one_line(tmp_path, stack):
    stack.job_config("cli")
    job = write_job(tmp_path, stack, events={"fields": {"id": "string", "entity_id": "int", "ts": "int",
                                                        "amt": "float"}})
    line = one_error_line(streamscore("run", "--config", job, cwd=tmp_path, timeout=120))
    assert "input 'amount' is neither an event field nor a feature" in line, line


def test_unreachable_feature_store_is_one_line(tmp_path, stack):
    stack.job_config("cli")
    job = write_job(tmp_path, stack, features={"store": f"plasma://{tmp_path}/no-store.sock?name=features"})
    line = one_error_line(streamscore("run", "--config", job, cwd=tmp_path, timeout=120))
    assert "feature store plasma://" in line and "(features.store)" in line, line


def test_dev_up_background_then_down_leaves_nothing(tmp_path):
    job = write_job(tmp_path, kafka={"input_topic": "tx", "output_topic": "tx-scores", "dead_letter_topic": "tx-dlq"},
                    features={"store": f"plasma://{tmp_path}/p.sock?name=customers"})
    up = streamscore("dev", "up", "--config", job, "--port", "0", "--background", "--plasma-memory", "64MiB",
                     cwd=tmp_path, timeout=120)
    assert up.returncode == 0, up.stderr
    servers = re.search(r'bootstrap_servers: "(127\.0\.0\.1:\d+)"', up.stderr).group(1)
    assert f'store: "plasma://{tmp_path}/p.sock?name=customers"' in up.stderr
    state = json.loads((tmp_path / ".streamscore" / "dev" / "dev.json").read_text())
    pids = [state["pid"], *state["child_pids"]]
    assert all(alive(p) for p in pids), state
    topics = AdminClient({"bootstrap.servers": servers}).list_topics(timeout=10).topics
    assert {"tx", "tx-scores", "tx-dlq"} <= set(topics) and len(topics["tx"].partitions) == 2

    status = streamscore("dev", "status", cwd=tmp_path)
    assert status.returncode == 0 and servers in status.stderr
    again = streamscore("dev", "up", "--config", job, "--port", "0", cwd=tmp_path, timeout=60)
    assert "a dev stack is already up" in one_error_line(again)

    down = streamscore("dev", "down", cwd=tmp_path, timeout=60)
    assert down.returncode == 0 and "stopped the dev stack" in down.stderr, down.stderr
    wait_gone(pids, 30, "dev down")
    assert not (tmp_path / "p.sock").exists()


def test_dev_up_foreground_stops_everything_on_ctrl_c_and_sigterm(tmp_path):
    job = write_job(tmp_path, features={"store": f"plasma://{tmp_path}/p.sock?name=features"})
    for sig in (signal.SIGINT, signal.SIGTERM):
        console = Console("dev", "up", "--config", job, "--port", "0", "--plasma-memory", "64MiB",
                          "--state-dir", "st", cwd=tmp_path)
        state = None
        try:
            console.wait_for(r"put these in", 120, "the addresses")
            state = json.loads((tmp_path / "st" / "dev.json").read_text())
            console.wait_for(r"status: up · broker", 60, "a status line")
            assert console.interrupt(sig) == 0
        finally:
            console.kill()
            if console.proc.returncode != 0:       # it did not stop them: the broker runs in a session
                for pid in (state or {}).get("child_pids", []):          # of its own, kill it here
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        console.wait_for(r"^stopped$", 5, "the stop message")
        wait_gone([state["pid"], *state["child_pids"]], 30, f"dev up after {sig.name}")
        assert "Traceback" not in "\n".join(console.lines)


def test_dev_up_names_the_brokers_it_has(tmp_path):
    line = one_error_line(streamscore("dev", "up", "--broker", "kafka", "--port", "0", "--state-dir", "st",
                                      cwd=tmp_path, timeout=60))
    assert "unknown broker 'kafka'; available: tansu" in line


def test_grafana_dashboard_shows_metrics_the_job_registers():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    dashboard = json.loads((root / "flink-conf" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"flink_taskmanager_job_task_operator_(\w+)", e)}
    source = "\n".join(p.read_text() for p in (root / "operators" / "flink").glob("*.py"))
    registered = set(re.findall(r'\.(?:counter|meter|distribution|gauge)\(\s*"(\w+)"', source))
    registered |= {f"{d}_p{q}" for d in re.findall(r'\.distribution\(\s*"(\w+)"', source) for q in (50, 95, 99)}
    assert {"records_in", "events_in_per_s", "predictions_per_s", "records_lag", "poll_to_ack_ms"} <= registered
    unknown = {m for m in used if m not in registered and not m.startswith("dead_letters_")}
    assert not unknown, f"the dashboard shows metrics no operator registers: {sorted(unknown)}"
    assert "dead_letters_out" in registered and len(dashboard["panels"]) >= 6


def test_dev_up_on_a_taken_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = streamscore("dev", "up", "--port", str(port), "--state-dir", "st",
                             "--plasma-socket", str(tmp_path / "p.sock"), cwd=tmp_path, timeout=120)
    line = one_error_line(result)
    assert "the broker did not start" in line and "is the port in use?" in line, line
    assert not (tmp_path / "st" / "dev.json").exists()

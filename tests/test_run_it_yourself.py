"""README "Run it yourself", run as written, from an empty folder to predictions read back: the
code blocks are taken from the README. One Flink MiniCluster drives everything `run` promises:
the Web UI URL, start-up stages, status lines with real numbers, a refused model file on the
console, and Ctrl-C leaving no process behind.

Two changes to the README's commands, both for a shared test machine: `dev up` gets `--port 0`
and the printed address goes into job.yaml (as the README says to do), and the Plasma socket
lives in the test's folder."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from console import Console, group_members, pids_with, streamscore, wait_gone

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_section() -> str:
    text = README.read_text()
    start = text.index("## Run it yourself")
    return text[start:text.index("\n## ", start + 1)]


def code_block(section: str, language: str, first_line: str) -> str:
    for match in re.finditer(rf"```{language}\n(.*?)```", section, re.S):
        if match.group(1).startswith(first_line):
            return match.group(1)
    raise AssertionError(f"README 'Run it yourself' has no {language} block starting {first_line!r}")


def rest(url: str, path: str):
    with urllib.request.urlopen(url + path, timeout=30) as response:
        return json.loads(response.read())


def commands(section: str) -> list[list[str]]:
    block = code_block(section, "bash", "streamscore dev up")
    return [shlex.split(line.split("  #")[0].split(" # ")[0]) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_run_it_yourself(tmp_path):
    section = readme_section()
    (tmp_path / "make_data.py").write_text(code_block(section, "python", "# make_data.py"))
    job_yaml = code_block(section, "yaml", "# job.yaml").replace(
        "/tmp/streamscore/plasma.sock", str(tmp_path / "plasma.sock"))
    (tmp_path / "job.yaml").write_text(job_yaml)
    made = subprocess.run([sys.executable, "make_data.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr
    events = (tmp_path / "events.jsonl").read_text().splitlines()

    steps = commands(section)
    assert [s[:2] for s in steps] == [["streamscore", "dev"], ["streamscore", "features"], ["streamscore", "run"],
                                      ["streamscore", "produce"], ["streamscore", "consume"],
                                      ["streamscore", "consume"], ["streamscore", "dev"]], steps
    dev_up, load, run, produce, consume, consume_dlq, dev_down = (s[1:] for s in steps)

    up = streamscore(*dev_up, "--port", "0", cwd=tmp_path, timeout=180)
    assert up.returncode == 0, up.stderr
    servers = re.search(r'bootstrap_servers: "(127\.0\.0\.1:\d+)"', up.stderr).group(1)
    (tmp_path / "job.yaml").write_text(job_yaml.replace("127.0.0.1:9092", servers))
    state = json.loads((tmp_path / ".streamscore" / "dev" / "dev.json").read_text())
    console = None
    try:
        loaded = streamscore(*load, cwd=tmp_path, timeout=300)
        assert loaded.returncode == 0, loaded.stderr

        started = time.monotonic()
        console = Console(*run, "--status-interval", "1", cwd=tmp_path)
        url = console.wait_for(r"Flink Web UI: (http://127\.0\.0\.1:\d+)", 600, "the Web UI URL").group(1)
        assert "taskmanagers" in rest(url, "/overview")
        console.wait_for(r"job RUNNING after", 600, "the job running")
        job_pgid = pids_with(str(tmp_path / "streamscore-logs" / "job.yaml"))[0]

        produced = streamscore(*produce, cwd=tmp_path, timeout=120)
        assert produced.returncode == 0 and f"sent {len(events):,} records" in produced.stderr, produced.stderr
        console.wait_for(r"first events scored after ([\d.]+) s", 600, "the first scores")
        first_scores_s = time.monotonic() - started
        # every event is accounted for in the status line: predictions + dead letters = sent
        status = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            lines = [ln for ln in console.lines if " status: " in ln]
            numbers = [re.search(r"in [\d,]+ ev/s \(([\d,]+)\) · predictions [\d,]+/s \(([\d,]+)\) · "
                                 r"dead letters ([\d,]+) \(([^)]*)\) · p50 ([\d,]+) ms p99 ([\d,]+) ms", ln) for ln in lines]
            numbers = [n for n in numbers if n]
            if numbers and sum(int(numbers[-1].group(i).replace(",", "")) for i in (2, 3)) == len(events):
                status = numbers[-1]
                break
            time.sleep(1)
        assert status, "no status line accounted for every event; last lines:\n" + "\n".join(console.lines[-10:])
        assert int(status.group(1).replace(",", "")) == len(events)
        assert "invalid_json 1" in status.group(4) and "unknown_entity" in status.group(4)
        assert int(status.group(6).replace(",", "")) >= int(status.group(5).replace(",", "")) >= 0
        assert int(status.group(6).replace(",", "")) > 0

        # the job's metrics under short names, with the events/s and predictions/s meters
        job_id = rest(url, "/jobs/overview")["jobs"][0]["jid"]
        ids = {m["id"] for v in rest(url, f"/jobs/{job_id}")["vertices"]
               for m in rest(url, f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics")}
        for name in ("records_in", "events_in_per_s", "predictions_out", "predictions_per_s", "records_lag",
                     "dead_letters.unknown_entity", "poll_to_ack_ms_p99"):
            assert f"source__enrich__score__sink.{name}" in ids, (name, sorted(i for i in ids if "." in i))

        # a broken model file replaces the served one: refused on the console, scoring goes on
        (tmp_path / "model.onnx.new").write_bytes(b"not a model")
        (tmp_path / "model.onnx.new").rename(tmp_path / "model.onnx")
        mark = len(console.lines)
        for _ in range(10):                      # the scorer checks the file when a batch comes
            streamscore(*produce, cwd=tmp_path, timeout=120)
            try:
                console.wait_for(r"model .*model\.onnx is refused", 15, "the refusal", mark)
                break
            except AssertionError:
                continue
        console.wait_for(r"model .*model\.onnx is refused", 1, "the refusal", mark)

        predictions = streamscore(*consume, cwd=tmp_path, timeout=180)
        scored = [json.loads(line) for line in predictions.stdout.splitlines()]
        good = {json.loads(e)["id"] for e in events[:-1] if json.loads(e)["customer_id"] < 2000}
        assert good <= {p["event_id"] for p in scored}
        assert {p["model"] for p in scored} == {"big-spender"}
        dead = [json.loads(line) for line in streamscore(*consume_dlq, cwd=tmp_path, timeout=180).stdout.splitlines()]
        assert {d["reason"] for d in dead} == {"invalid_json", "unknown_entity"}
        assert "this line is not JSON" in {d["value"] for d in dead}

        members = group_members(job_pgid)
        assert len(members) >= 2, f"the job's process group: {members}"   # the job's Python client and its JVM
        assert console.interrupt() == 130
        console.wait_for(r"^stopped$", 5, "the stop message")
        wait_gone(members, 60, "the job after Ctrl-C")
        assert not group_members(job_pgid), "processes of the job's group outlived Ctrl-C"
        assert "Traceback" not in "\n".join(console.lines)
        last_status = [ln for ln in console.lines if " status: " in ln][-1]
        print(f"\ntime to the first scores: {first_scores_s:.1f} s; last status line: {last_status}")
    finally:
        if console is not None:
            if console.proc.poll() is None:            # a failed assertion: stop `run` as a user would
                with contextlib.suppress(Exception):
                    console.interrupt(timeout=60)
            console.kill()
        for pid in pids_with(str(tmp_path / "streamscore-logs" / "job.yaml")):   # a job a failure left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        down = streamscore(*dev_down, cwd=tmp_path, timeout=60)
        assert down.returncode == 0, down.stderr
        wait_gone([state["pid"], *state["child_pids"]], 30, "dev down")

"""Every code block of README.md and the package READMEs works as written:

* ``python`` blocks run (in a fresh interpreter, in a folder holding the files they name);
* ``yaml`` blocks are valid job configuration (the job's own typed config accepts them);
* ``bash`` blocks: every ``streamscore`` command names an existing command and only options it
  has, every ``make`` target exists, and scripts named by path exist.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from connectors.feature_store import load_table
from jobs.cli import build_parser
from jobs.config import JobConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "connectors/feature_store/README.md", "model_formats/README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
EXAMPLE_STORE = "/dev/shm/streamscore-example"     # the store the README's Beam block names


def blocks(language: str) -> list[tuple[str, int, str]]:
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == language:
                found.append((doc, text[:m.start()].count("\n") + 1, m.group(2)))
    return found


def block_id(block) -> str:
    return f"{block[0]}:{block[1]}"


@pytest.fixture
def example_dir(stack, tmp_path):
    """A folder with the files the blocks name (models/demo.onnx and models/fraud.onnx, the demo
    model) and a store of this test's own holding the demo features: the blocks' example store
    path is swapped for it, so no two tests ever share one."""
    (tmp_path / "models").mkdir()
    for name in ("demo.onnx", "fraud.onnx"):
        shutil.copy(stack.model_path, tmp_path / "models" / name)
    store = f"{EXAMPLE_STORE}-{uuid.uuid4().hex[:8]}"     # this test's own (the README names one path)
    load_table(f"arrow-shm://{store}", stack.features, key="entity_id", replace_schema=True)
    yield tmp_path, store
    shutil.rmtree(store, ignore_errors=True)


@pytest.mark.xdist_group("readme-example-store")   # one worker: the blocks share EXAMPLE_STORE
@pytest.mark.parametrize("block", blocks("python"), ids=block_id)
def test_python_blocks_run_as_written(block, example_dir):
    doc, line, code = block
    example_dir, store = example_dir
    code = code.replace(EXAMPLE_STORE, store)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=example_dir, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{doc}:{line} failed:\n{done.stderr[-3000:]}"
    if "SplitRejected" in code:     # the Beam block: one row scored, the unknown entity rejected as such
        out = done.stdout.split("\n")
        assert any(l.startswith("42 0.") or l.startswith("42 1.0") for l in out), done.stdout
        assert f"{10**9} unknown_entity" in out, done.stdout


@pytest.mark.parametrize("block", blocks("yaml"), ids=block_id)
def test_yaml_blocks_are_valid_job_configuration(block):
    doc, line, text = block
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"{doc}:{line}: not a mapping"
    JobConfig.model_validate(data)      # unknown keys and bad values raise, naming them


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _check_streamscore(words: list[str], where: str) -> None:
    parser, used = build_parser(), []
    for word in words:
        sub = _subparsers(parser)
        if word.startswith("-") or word not in sub:
            break
        parser, used = sub[word], used + [word]
    assert used, f"{where}: no such streamscore command: {' '.join(words)}"
    options = {o for a in parser._actions for o in a.option_strings}
    for word in words:
        flag = word.split("=", 1)[0].strip("[]'\"")
        if flag.startswith("--") and flag != "--":
            assert flag in options, f"{where}: streamscore {' '.join(used)} has no option {flag}"
        if word == "--":
            break


@pytest.mark.parametrize("block", blocks("bash"), ids=block_id)
def test_bash_blocks_name_real_commands_and_options(block):
    doc, line, text = block
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for n, raw in enumerate(text.splitlines()):
        command = raw.split(" #", 1)[0].strip()
        if not command:
            continue
        where = f"{doc}:{line + 1 + n}"
        words = shlex.split(command)
        if words[0] == "streamscore":
            _check_streamscore(words[1:], where)
        elif words[0] == "make":
            assert words[1] in targets, f"{where}: no make target {words[1]}"
        elif "/" in words[0]:
            assert (ROOT / words[0]).exists(), f"{where}: no script {words[0]}"

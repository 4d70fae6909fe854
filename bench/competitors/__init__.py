"""Competitor frameworks for the end-to-end benchmark, in their own venv.

Quix Streams and Bytewax conflict with the project's pins (confluent-kafka, pydantic), so they
live in ``.venv-bench`` (``make bench-deps``: ``bench/competitors/setup.sh`` installs
``bench/competitors/requirements.txt``). Their runners import only the project's connectors,
model_formats, operators.steps and jobs.config from the work tree, never pyflink, and re-exec
themselves in that venv, so ``python -m bench.quix_runner --config job.yaml`` works from either.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent.parent
VENV = ROOT / ".venv-bench"
SETUP = "make bench-deps"


def venv_ready() -> bool:
    """Whether the competitors' venv has been set up (``make bench-deps`` completed)."""
    return (VENV / ".installed").exists()


def use_bench_venv() -> None:
    """Re-exec the running ``python -m MODULE ...`` in ``.venv-bench`` unless already there."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not venv_ready():
        sys.exit(f"{VENV} is missing: run `{SETUP}` first")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    module = sys.modules["__main__"].__spec__.name
    os.execve(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), "-m", module, *sys.argv[1:]], env)


def state_dir(checkpoint_dir: str, name: str) -> Path:
    """A runner's local state folder, beside the Flink job's checkpoints (``flink.checkpoint_dir``)."""
    return Path(urlparse(checkpoint_dir).path) / name

#!/usr/bin/env bash
# Create .venv-bench (competitor frameworks: Quix Streams, Bytewax) next to the project's .venv.
# Usage: bench/competitors/setup.sh [PYTHON]   (make bench-deps)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="${1:-$(command -v python3.11 || command -v python3)}"
venv="$root/.venv-bench"
req="$root/bench/competitors/requirements.txt"
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the bench venv needs Python 3.11"'
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -r "$req"
# smoke: the frameworks and the project modules the runners import
PYTHONPATH="$root" "$venv/bin/python" -c 'import quixstreams, bytewax.connectors.kafka, model_formats, connectors.feature_store, operators.steps, jobs.config; print("bench venv ready:", quixstreams.__version__)'
cp "$req" "$venv/.installed"

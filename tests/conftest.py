"""Shared fixtures: one embedded broker + Plasma store + demo model for the whole session.

Every component is real: the Tansu broker process, plasma-store-server, onnxruntime, and a
Flink MiniCluster per job process.
"""
from __future__ import annotations

import pytest

from jobs.embedded import EmbeddedStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Broker + Plasma store loaded with 100k × 32 demo features + the demo ONNX model."""
    with EmbeddedStack(tmp_path_factory.mktemp("stack"), say=lambda *_: None) as s:
        yield s

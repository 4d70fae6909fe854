"""Shared fixtures: one embedded broker + Plasma store + demo model for the whole session.

Every component is real: the broker process, plasma-store-server, onnxruntime, and a Flink
MiniCluster per job process. The broker is Apache Kafka (single-node KRaft, jars fetched once by
mvn), the broker our users run; ``STREAMSCORE_TEST_BROKER=tansu`` runs the same tests on Tansu, the
demo's zero-download broker (which ``tests/test_run_it_yourself.py`` and ``tests/test_ports.py``
exercise on their own).
"""
from __future__ import annotations

import os
import shutil
import uuid

import pytest

from jobs.embedded import BROKERS, EmbeddedStack


def session_broker() -> str:
    """The broker the session's ``stack`` runs: ``$STREAMSCORE_TEST_BROKER`` (tansu | kafka)."""
    kind = os.environ.get("STREAMSCORE_TEST_BROKER", "kafka").strip().lower() or "kafka"
    if kind not in BROKERS:
        raise pytest.UsageError(f"STREAMSCORE_TEST_BROKER={kind!r}: one of {', '.join(BROKERS)}")
    return kind



@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Broker + Plasma store loaded with 100k × 32 demo features + the demo ONNX model."""
    with EmbeddedStack(tmp_path_factory.mktemp("stack"), say=lambda *_: None, broker=session_broker()) as s:
        yield s


@pytest.fixture(scope="session")
def kafka_stack(request, tmp_path_factory):
    """A stack on Apache Kafka: the session's ``stack`` when it runs on Kafka, else one of its own
    (one Kafka JVM per session either way)."""
    if session_broker() == "kafka":
        yield request.getfixturevalue("stack")
        return
    with EmbeddedStack(tmp_path_factory.mktemp("kafka-stack"), say=lambda *_: None, broker="kafka") as s:
        yield s


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """``tansu`` or ``kafka``: the broker of the session's ``stack`` (without starting it)."""
    return session_broker()


@pytest.fixture(scope="session")
def hdfs(tmp_path_factory):
    """An HDFS for the session: Hadoop's MiniDFSCluster (1 NameNode + 1 DataNode, jars fetched once
    by mvn) on loopback; ``hdfs.webhdfs_url`` is its root for file targets. Skipped only where Java
    or Maven is missing (in CI that is an error)."""
    from connectors.embedded.hdfs import EmbeddedHDFS
    from connectors.embedded.maven import jars_cached

    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None
               and not (tool == "java" and os.environ.get("JAVA_HOME"))
               and not (tool == "mvn" and jars_cached("hdfs-minicluster"))]
    if missing:
        reason = f"the embedded HDFS (MiniDFSCluster from Maven Central) needs {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI installs both)")
        pytest.skip(reason)
    with EmbeddedHDFS(tmp_path_factory.mktemp("hdfs")) as cluster:
        yield cluster


@pytest.fixture(params=["local", pytest.param("hdfs", marks=[pytest.mark.slow, pytest.mark.hdfs])])
def place(request, tmp_path) -> str:
    """Where a file-sink test writes: a local folder (``file://``) or a fresh folder on the
    session's embedded HDFS (``webhdfs://``, through fsspec's WebHDFS)."""
    if request.param == "local":
        return tmp_path.as_uri()
    return f"{request.getfixturevalue('hdfs').webhdfs_url}/{request.node.name.split('[')[0]}/{uuid.uuid4().hex[:12]}"


@pytest.hookimpl(tryfirst=True)     # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``), every HDFS test runs in the same worker, so one
    MiniDFSCluster JVM serves them all instead of one per worker."""
    for item in items:
        if item.get_closest_marker("hdfs") is not None:
            item.add_marker(pytest.mark.xdist_group("hdfs"))

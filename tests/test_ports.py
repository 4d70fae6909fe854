"""Race-free ports (connectors/embedded/ports.py): a process started on a port is checked to be the
one listening there, and a port someone else holds is retried, never talked to."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from connectors.embedded import ports, tansu
from connectors.embedded.ports import PortError, free_port, listening_ports, wait_listening
from connectors.embedded.tansu import BrokerError, EmbeddedBroker
from connectors.kafka.clients import ensure_topics, partitions_of

SERVE = "import socket,sys,time; s=socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(60)"


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice():
    low, _ = ports.ephemeral_range()
    drawn = [free_port() for _ in range(200)]
    assert len(set(drawn)) == len(drawn)
    assert all(port < low for port in drawn), (low, [p for p in drawn if p >= low])


def test_wait_listening_finds_the_child_that_owns_the_port():
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", SERVE, str(port)])
    try:
        assert wait_listening(child.pid, port, timeout_s=30, what="child", alive=lambda: child.poll() is None) == port
        assert port in listening_ports(child.pid)
        assert port not in listening_ports(child.pid + 10_000_000)      # no such process: nothing
    finally:
        child.kill(), child.wait()


def test_a_port_held_by_another_process_is_a_clear_failure_not_a_conversation():
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], stderr=subprocess.DEVNULL)
        try:
            with pytest.raises(PortError, match=f"exited before listening on {port}"):
                wait_listening(child.pid, port, timeout_s=60, what="child", alive=lambda: child.poll() is None)
        finally:
            child.kill(), child.wait()


def test_embedded_broker_retries_on_a_new_port_when_its_port_was_taken(monkeypatch, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as held:          # someone else's server
        taken = held.getsockname()[1]
        with pytest.raises(BrokerError, match="could not listen"):  # a given port is not changed
            EmbeddedBroker(port=taken, log_path=tmp_path / "given.log").start(timeout_s=30)
        drawn = iter([taken])
        monkeypatch.setattr(tansu, "free_port", lambda: next(drawn, None) or free_port())
        with EmbeddedBroker(log_path=tmp_path / "drawn.log") as broker:
            assert broker.port != taken
            assert broker.port in listening_ports(broker._proc.pid)
            ensure_topics(broker.bootstrap_servers, {"ports-probe": 2})
            assert len(partitions_of(broker.bootstrap_servers, "ports-probe")) == 2

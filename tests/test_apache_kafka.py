"""The Kafka clients and the broker facts the project relies on, against a real Apache Kafka 4.x
broker (single-node KRaft, ``connectors/embedded/apache_kafka.py``): produce/consume through
``connectors.kafka``, a correct high watermark, transactions that isolate under
``read_committed``, and a ``kill -9`` of the broker with an idempotent producer losing and
duplicating nothing it had acknowledged. (Tansu fails the last three; see README "Tansu and
Apache Kafka".) One Kafka JVM per session: the ``kafka_stack`` fixture.

The scoring job itself runs against Apache Kafka in every suite on the ``stack`` fixture (the
default; ``STREAMSCORE_TEST_BROKER=tansu`` or ``make test-tansu`` for Tansu).
"""
from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.dead_letter import REASON_HEADER, SOURCE_HEADER, DeadLetter
from connectors.embedded import apache_kafka
from connectors.embedded.apache_kafka import ApacheKafkaBroker
from connectors.kafka.clients import consumer_config, ensure_topics, partitions_of, producer_config
from connectors.kafka.partition_reader import PartitionReader
from connectors.kafka.writer import KafkaBatchWriter
from jobs.producer import produce


@pytest.fixture(scope="module")
def kafka(kafka_stack) -> ApacheKafkaBroker:
    assert isinstance(kafka_stack.broker, ApacheKafkaBroker)
    return kafka_stack.broker


def _topic(kafka: ApacheKafkaBroker, partitions: int = 1, prefix: str = "ak") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka.bootstrap_servers, {name: partitions})
    return name


def _read_until(bootstrap: str, topic: str, partitions: list[int], done, isolation: str = "read_committed",
                timeout_s: float = 120, extra: dict | None = None) -> list:
    """Messages of ``topic`` from the beginning until ``done(values)`` holds (or fail naming what
    was awaited and what was seen)."""
    c = Consumer(consumer_config(bootstrap, f"read-{uuid.uuid4().hex[:6]}",
                                 {"isolation.level": isolation, **(extra or {})}))
    c.assign([TopicPartition(topic, p, 0) for p in partitions])
    msgs: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done([m.value() for m in msgs]):
            assert time.monotonic() < deadline, (
                f"{isolation} reader of {topic}: condition not met within {timeout_s}s; saw {len(msgs)} "
                f"records, last {[m.value() for m in msgs[-3:]]}")
            msgs += [m for m in c.consume(500, 0.2) if m.error() is None]
    finally:
        c.close()
    return msgs


def test_broker_is_apache_kafka_in_kraft_mode(kafka):
    md = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=30)
    assert md.cluster_id == kafka.cluster_id
    assert [b.port for b in md.brokers.values()] == [kafka.port]
    assert kafka.is_running() and kafka.port != kafka.controller_port
    assert (kafka.workdir / "data" / "meta.properties").exists(), "storage was not formatted"


def test_writer_and_partition_reader_round_trip_with_a_true_high_watermark(kafka):
    topic = _topic(kafka, partitions=3)
    dlq = _topic(kafka, prefix="ak-dlq")
    assert partitions_of(kafka.bootstrap_servers, topic) == [0, 1, 2]
    writer = KafkaBatchWriter(producer_config(kafka.bootstrap_servers), topic, dlq)
    values = [f"v{i}".encode() for i in range(900)]
    writer.write(values, keys=[f"k{i % 7}".encode() for i in range(900)],
                 dead_letters=[DeadLetter(b"\xff bytes", "invalid_utf8", "byte 0xff", topic, 0, 1)])
    writer.close()

    got: list[bytes] = []
    probe = Consumer(consumer_config(kafka.bootstrap_servers, "watermarks"))
    for p in (0, 1, 2):
        reader = PartitionReader(consumer_config(kafka.bootstrap_servers, "ak-reader"), topic, p)
        low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)
        part: list[bytes] = []
        nxt, deadline = 0, time.monotonic() + 60
        while len(part) < high - low:      # the high watermark says how many there are: read them all
            assert time.monotonic() < deadline, f"partition {p}: {len(part)} of {high - low} records read"
            chunk = reader.read(nxt, 500, 0.2)
            part += chunk.values
            nxt = chunk.next_offset or nxt
        reader.close()
        assert low == 0 and nxt == high, f"partition {p}: read to {nxt}, watermarks ({low}, {high})"
        got += part
    probe.close()
    assert sorted(got) == sorted(values), "the high watermarks did not add up to what was written"

    letters = _read_until(kafka.bootstrap_servers, dlq, [0], lambda v: len(v) >= 1)
    assert letters[0].value() == b"\xff bytes"
    headers = dict(letters[0].headers())
    assert headers[REASON_HEADER] == b"invalid_utf8" and headers[SOURCE_HEADER] == f"{topic}/0/1".encode()


def test_listing_topics_does_not_create_them(kafka):
    with pytest.raises(ValueError, match="does not exist"):
        partitions_of(kafka.bootstrap_servers, f"no-such-topic-{uuid.uuid4().hex[:6]}")
    assert not [t for t in AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=30).topics
                if t.startswith("no-such-topic-")]


def test_transactions_isolate_under_read_committed(kafka):
    """Aborted and still-open transactions are invisible to read_committed readers (Tansu shows
    them); read_uncommitted readers see everything; committing the open one releases it."""
    bs = kafka.bootstrap_servers
    topic = _topic(kafka, prefix="ak-tx")
    tx = Producer(producer_config(bs, {"transactional.id": f"tx-{uuid.uuid4().hex[:8]}"}))
    plain = Producer(producer_config(bs))
    tx.init_transactions(60)
    tx.begin_transaction()
    for i in range(100):
        tx.produce(topic, f"aborted-{i}".encode())
    tx.flush(60)
    tx.abort_transaction(60)
    tx.begin_transaction()
    for i in range(50):
        tx.produce(topic, f"committed-{i}".encode())
    tx.commit_transaction(60)
    plain.produce(topic, b"end-1")
    assert plain.flush(60) == 0

    seen = [m.value() for m in _read_until(bs, topic, [0], lambda v: b"end-1" in v)]
    assert seen == [f"committed-{i}".encode() for i in range(50)] + [b"end-1"], seen[:5]
    everything = [m.value() for m in _read_until(bs, topic, [0], lambda v: b"end-1" in v, "read_uncommitted")]
    assert len(everything) == 151 and everything[0] == b"aborted-0"

    # an open transaction holds back read_committed readers at its first record (the LSO), even
    # for records written after it outside any transaction
    tx.begin_transaction()
    for i in range(20):
        tx.produce(topic, f"open-{i}".encode())
    tx.flush(60)
    plain.produce(topic, b"end-2")
    assert plain.flush(60) == 0
    _read_until(bs, topic, [0], lambda v: b"end-2" in v, "read_uncommitted")     # written, visible uncommitted
    held_back = _read_until(bs, topic, [0], lambda v: b"end-1" in v)
    c = Consumer(consumer_config(bs, "held-back", {"isolation.level": "read_committed"}))
    c.assign([TopicPartition(topic, 0, held_back[-1].offset() + 1)])
    early = [m.value() for _ in range(15) for m in c.consume(100, 0.2) if m.error() is None]
    assert early == [], f"read_committed saw records of an open transaction: {early[:3]}"
    tx.commit_transaction(60)
    deadline = time.monotonic() + 60
    while b"end-2" not in early:
        assert time.monotonic() < deadline, f"after the commit, read_committed saw only {early[:3]}…"
        early += [m.value() for m in c.consume(100, 0.2) if m.error() is None]
    c.close()
    assert early == [f"open-{i}".encode() for i in range(20)] + [b"end-2"]
    # the high watermark counts the two commit markers and the abort marker (control records)
    probe = Consumer(consumer_config(bs, "tx-watermarks"))
    assert probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=30, cached=False) == (0, 100 + 50 + 20 + 2 + 3)
    probe.close()


def test_acknowledged_records_survive_broker_kill9_with_idempotent_producer(kafka):
    """kill -9 the broker while an idempotent producer (the project's default settings) sends;
    restart it on the same port and data: every acknowledged record is where its acknowledgement
    said, and nothing is written twice. (Tansu lost acknowledged records here.)"""
    bs = kafka.bootstrap_servers
    topic = _topic(kafka, partitions=2, prefix="ak-kill")
    n = 20_000
    values = [f"rec-{i}".encode() for i in range(n)]
    acked: list[str] = []
    errors: list[BaseException] = []
    progress = {"n": 0}

    def send() -> None:
        try:   # the broker is down for a while (JVM start): let records wait instead of expiring
            acked.extend(produce(bs, topic, values, rate=2000, on_progress=lambda k: progress.__setitem__("n", k),
                                 settings={"message.timeout.ms": 600_000}, flush_timeout_s=600))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    deadline = time.monotonic() + 120
    while progress["n"] < n // 4:
        assert time.monotonic() < deadline and sender.is_alive(), f"producer stuck at {progress['n']} ({errors})"
        time.sleep(0.05)
    port, cluster = kafka.port, kafka.cluster_id
    kafka.kill()
    assert not kafka.is_running()
    killed_at = progress["n"]
    kafka.restart()
    assert (kafka.port, kafka.cluster_id) == (port, cluster), "restart must come back on the same port and data"
    sender.join(timeout=600)
    assert not sender.is_alive() and not errors, f"producer failed: {errors}"
    assert killed_at < n, "the kill happened after everything was sent: not mid-stream"
    assert len(acked) == n

    msgs = _read_until(bs, topic, [0, 1], lambda v: len(v) >= n, "read_uncommitted", timeout_s=300)
    # give duplicates a chance to show: read on until both partitions' high watermarks are reached
    probe = Consumer(consumer_config(bs, "kill-watermarks"))
    highs = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)[1] for p in (0, 1)}
    probe.close()
    msgs = _read_until(bs, topic, [0, 1], lambda v: len(v) >= sum(highs.values()), "read_uncommitted")
    at = {f"{m.topic()}/{m.partition()}/{m.offset()}": m.value() for m in msgs}
    wrong = [(c, values[i], at.get(c)) for i, c in enumerate(acked) if at.get(c) != values[i]]
    assert not wrong, f"{len(wrong)} acknowledged records not where their ack said, e.g. {wrong[:3]}"
    duplicates = len(msgs) - len({m.value() for m in msgs})
    assert duplicates == 0 and len(msgs) == n, f"{len(msgs)} records in the log for {n} sent ({duplicates} duplicates)"
    print(f"\nbroker killed after {killed_at} of {n} records sent; all {n} acknowledged, 0 lost, 0 duplicates")


@pytest.mark.slow
def test_a_taken_port_is_detected_and_the_broker_moves_to_new_ports(tmp_path, monkeypatch):
    """Another process takes the port between choosing and binding: Kafka exits ("failed to
    bind"), the broker is started again on new ports and is ready only on its own cluster id."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = apache_kafka._two_free_ports
    picks = iter([(real()[0], taken)])          # the controller port: Kafka binds it first
    monkeypatch.setattr(apache_kafka, "_two_free_ports", lambda: next(picks, None) or real())
    broker = ApacheKafkaBroker(tmp_path / "kafka", heap="256m")
    try:
        broker.start()
        assert taken not in (broker.port, broker.controller_port)
        assert apache_kafka.BIND_FAILURE in broker.log_path.read_text(), "the first attempt should have failed to bind"
        md = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=30)
        assert md.cluster_id == broker.cluster_id
    finally:
        broker.close()
        squatter.close()

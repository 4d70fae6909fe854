"""The Kafka reader and writer against the real embedded broker."""
from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.dead_letter import REASON_HEADER, SOURCE_HEADER, DeadLetter
from connectors.kafka.clients import consumer_config, ensure_topics, partitions_of, producer_config
from connectors.kafka.partition_reader import PartitionReader
from connectors.kafka.writer import DeliveryError, KafkaBatchWriter


@pytest.fixture
def topics(stack):
    name = f"io-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.broker.bootstrap_servers, {name: 2, f"{name}-dlq": 1})
    return stack.broker.bootstrap_servers, name


def read_all(bootstrap, topic, partition, expected, reader=None, start_offset=None):
    reader = reader or PartitionReader(consumer_config(bootstrap, "t"), topic, partition)
    values, offsets, nxt = [], [], start_offset
    for _ in range(200):
        chunk = reader.read(nxt, 100, 0.05)
        values += chunk.values
        offsets += chunk.offsets
        nxt = chunk.next_offset or nxt
        if len(values) >= expected:
            break
    return values, offsets


def test_writer_acknowledges_and_reader_resumes_from_any_offset(topics):
    bootstrap, topic = topics
    writer = KafkaBatchWriter(producer_config(bootstrap), topic, f"{topic}-dlq")
    values = [f"v{i}".encode() for i in range(300)]
    writer.write(values, keys=[b"same-key"] * 300)   # one key → one partition, in order
    writer.close()
    part = next(p for p in partitions_of(bootstrap, topic)
                if read_all(bootstrap, topic, p, 1)[0])
    got, offsets = read_all(bootstrap, topic, part, 300)
    assert got == values
    assert offsets == list(range(offsets[0], offsets[0] + 300))
    # the caller owns the offset: a fresh reader (as after a restore) resumes exactly there
    resumed, resumed_offsets = read_all(bootstrap, topic, part, 100, start_offset=offsets[200])
    assert resumed[:100] == values[200:]
    # and the same reader seeks back when asked for an earlier offset
    reader = PartitionReader(consumer_config(bootstrap, "t"), topic, part)
    read_all(bootstrap, topic, part, 300, reader=reader)
    again, _ = read_all(bootstrap, topic, part, 10, reader=reader, start_offset=offsets[5])
    assert again[:10] == values[5:15]


def test_dead_letters_keep_original_bytes_reason_and_source(topics):
    bootstrap, topic = topics
    writer = KafkaBatchWriter(producer_config(bootstrap), topic, f"{topic}-dlq")
    letter = DeadLetter(b"\xff\x00 not json", "invalid_utf8", "byte 0xff", "in", 3, 42)
    writer.write([], dead_letters=[letter])
    c = Consumer(consumer_config(bootstrap, "dlq-check"))
    c.assign([TopicPartition(f"{topic}-dlq", 0, 0)])
    msgs = []
    for _ in range(100):
        msgs += [m for m in c.consume(10, 0.1) if m.error() is None]
        if msgs:
            break
    c.close()
    assert len(msgs) == 1
    headers = dict(msgs[0].headers())
    assert msgs[0].value() == b"\xff\x00 not json"
    assert headers[REASON_HEADER] == b"invalid_utf8"
    assert headers[SOURCE_HEADER] == b"in/3/42"


def test_writer_without_dlq_refuses_dead_letters(topics):
    bootstrap, topic = topics
    writer = KafkaBatchWriter(producer_config(bootstrap), topic, None)
    with pytest.raises(DeliveryError, match="no dead-letter topic"):
        writer.write([], dead_letters=[DeadLetter(b"x", "invalid_json", "d", "t", 0, 0)])


def test_unknown_topic_is_a_clear_error(stack):
    with pytest.raises(ValueError, match="does not exist"):
        partitions_of(stack.broker.bootstrap_servers, "no-such-topic-xyz")


def test_missing_experiment_topic_drops_shadow_records_instead_of_failing(topics):
    """A broker that does not create topics on demand (here: a producer that does not ask it to):
    the shadow/comparison topic is found missing, its records are dropped (the sink counts them)
    and the served batch is written; once the topic exists it is written again."""
    from operators.flink.kafka_sink import ExperimentTopics

    bootstrap, name = topics
    writer = KafkaBatchWriter({**producer_config(bootstrap), "allow.auto.create.topics": False}, name, f"{name}-dlq")
    shadow = f"{name}-shadow"
    known = ExperimentTopics(writer, recheck_s=0)
    assert known.writable(name) and not known.writable(shadow)
    writer.write([b"served"], [b"k"], extra=[(shadow, [b"s"], [b"k"])] if known.writable(shadow) else [])
    ensure_topics(bootstrap, {shadow: 1})
    assert known.writable(shadow)
    writer.write([b"served"], [b"k"], extra=[(shadow, [b"s"], [b"k"])])
    assert read_all(bootstrap, shadow, 0, 1)[0] == [b"s"]
    writer.close()

"""The Beam Kafka reader (splittable DoFn, offsets in the restriction) and writer DoFn against
the embedded broker, on the DirectRunner."""
from __future__ import annotations

import uuid

import apache_beam as beam
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.dead_letter import REASON_HEADER, SOURCE_HEADER, DeadLetter
from connectors.events import EventSchema, JsonEventDecoder
from connectors.kafka.clients import consumer_config, ensure_topics, producer_config
from operators.batch import MicroBatch
from operators.beam.kafka_io import ReadFromKafkaPartitions, WriteToKafkaFn, partition_reads
from beam_helpers import collect, load


@pytest.fixture
def topic(stack):
    name = f"beam-io-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.broker.bootstrap_servers, {name: 2, f"{name}-out": 1, f"{name}-dlq": 1})
    return stack.broker.bootstrap_servers, name


def fill(bootstrap: str, topic: str, per_partition: int) -> dict[int, list[bytes]]:
    """``per_partition`` records into each of the two partitions, acknowledged."""
    producer = Producer(producer_config(bootstrap))
    sent = {p: [f"{topic}-{p}-{i}".encode() for i in range(per_partition)] for p in (0, 1)}
    for partition, values in sent.items():
        for value in values:
            producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0
    return sent


def read(bootstrap, topic, tmp_path, start=None, stop=None, max_records=25) -> dict[int, list[tuple[int, bytes]]]:
    out = tmp_path / f"chunks-{uuid.uuid4().hex[:6]}.pkl"
    with beam.Pipeline(runner="DirectRunner") as p:
        chunks = p | ReadFromKafkaPartitions(partition_reads(topic, [0, 1], start, stop),
                                             consumer_config(bootstrap, "beam-io"), max_records=max_records)
        collect(chunks, out, "chunks")
    got: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}
    for chunk in load(out):
        assert len(chunk.offsets) <= max_records
        got[chunk.partition] += list(zip(chunk.offsets, chunk.values))
    return {p: sorted(records) for p, records in got.items()}


def test_bounded_read_of_a_fixed_offset_range_returns_exactly_that_range(topic, tmp_path):
    bootstrap, name = topic
    sent = fill(bootstrap, name, 120)
    got = read(bootstrap, name, tmp_path, start={0: 10, 1: 55}, stop={0: 97, 1: 120})
    assert got[0] == list(zip(range(10, 97), sent[0][10:97]))
    assert got[1] == list(zip(range(55, 120), sent[1][55:120]))
    # no start offset: from the earliest record
    whole = read(bootstrap, name, tmp_path, stop={0: 120, 1: 3}, max_records=1000)
    assert [v for _, v in whole[0]] == sent[0] and [v for _, v in whole[1]] == sent[1][:3]


def test_writer_acknowledges_dead_letters_with_reason_and_source(topic):
    bootstrap, name = topic
    decoder = JsonEventDecoder(EventSchema())
    letters = [DeadLetter(b"{broken", "invalid_json", "cut short", name, 1, 7),
               DeadLetter(None, "empty_message", "tombstone", name, 0, 3)]
    empty = decoder.decode([], [])
    batch = MicroBatch(name, 1, empty.events, letters)
    with beam.Pipeline(runner="DirectRunner") as p:
        (p | beam.Create([batch], reshuffle=False)
         | beam.ParDo(WriteToKafkaFn(producer_config(bootstrap), f"{name}-out", f"{name}-dlq")))
    c = Consumer(consumer_config(bootstrap, "dlq-check"))
    c.assign([TopicPartition(f"{name}-dlq", 0, 0)])
    messages = []
    for _ in range(100):
        messages += [m for m in c.consume(10, 0.1) if m.error() is None]
        if len(messages) >= 2:
            break
    c.close()
    assert [(m.value(), dict(m.headers())[REASON_HEADER], dict(m.headers())[SOURCE_HEADER]) for m in messages] == [
        (b"{broken", b"invalid_json", f"{name}/1/7".encode()), (None, b"empty_message", f"{name}/0/3".encode())]


def test_writer_refuses_a_micro_batch_with_unscored_events(topic):
    bootstrap, name = topic
    decoded = JsonEventDecoder(EventSchema()).decode([b'{"id": "a", "entity_id": 1, "amount": 1.0, "ts": 1}'], [0])
    with pytest.raises(Exception, match="dead letters only"):
        with beam.Pipeline(runner="DirectRunner") as p:
            (p | beam.Create([MicroBatch(name, 0, decoded.events)], reshuffle=False)
             | beam.ParDo(WriteToKafkaFn(producer_config(bootstrap), f"{name}-out", f"{name}-dlq")))

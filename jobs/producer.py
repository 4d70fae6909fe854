"""Producing test/demo events at a target rate and remembering where each one landed."""
from __future__ import annotations

import time
from typing import Callable, Iterable

from confluent_kafka import Producer

from connectors.kafka.clients import producer_config


def produce(bootstrap_servers: str, topic: str, records: Iterable[dict | bytes], rate: float | None = None,
            encode: Callable[[dict], bytes] | None = None,
            on_progress: Callable[[int], None] | None = None,
            warm_up: Iterable[dict | bytes] = (), settings: dict | None = None,
            flush_timeout_s: float = 60.0, partitions: int | None = None) -> list[str]:
    """Produce every record (dicts are encoded by ``encode`` at send time, which stamps the
    creation time) at about ``rate`` records/s (None: as fast as possible). Returns the input
    coordinates ``topic/partition/offset`` of every acknowledged record, in send order.

    ``warm_up`` records are sent and acknowledged first, before the rate clock starts, and are
    not among the returned coordinates: a new idempotent producer holds its first records for
    ~0.5 s (it retries acquiring a producer id until a broker connection is up), a delay that
    would otherwise show up in latency measurements as the pipeline's.
    ``settings``: extra producer settings (e.g. the job config's ``kafka.producer``);
    ``flush_timeout_s``: how long to wait for the last acknowledgements (raise it, with
    ``message.timeout.ms``, to outlast a broker restart); ``partitions``: send record ``i`` to
    partition ``i % partitions`` (None: the producer's own partitioner, sticky in batches)."""
    producer = Producer(producer_config(bootstrap_servers, {"linger.ms": 2, **(settings or {})}))
    for record in warm_up:
        producer.produce(topic, encode(record) if isinstance(record, dict) else record)
    if producer.flush(60):
        raise RuntimeError("warm-up records not acknowledged within 60 s")
    coords: dict[int, str] = {}
    errors: list = []

    def delivered(index: int):
        def callback(err, msg):
            if err is not None:
                errors.append(err)
            else:
                coords[index] = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        return callback

    started = time.monotonic()
    sent = 0
    for sent, record in enumerate(records, 1):
        value = encode(record) if isinstance(record, dict) else record
        while True:
            try:
                if partitions:
                    producer.produce(topic, value, partition=(sent - 1) % partitions, on_delivery=delivered(sent - 1))
                else:
                    producer.produce(topic, value, on_delivery=delivered(sent - 1))
                break
            except BufferError:
                producer.poll(0.01)
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0.002:
                producer.poll(0)
                time.sleep(ahead)
        if sent % 500 == 0:
            producer.poll(0)
            if on_progress:
                on_progress(sent)
    producer.flush(flush_timeout_s)
    if errors or len(coords) != sent:
        raise RuntimeError(f"{sent - len(coords)} of {sent} records not acknowledged: {errors[:3]}")
    if on_progress:
        on_progress(sent)
    return [coords[i] for i in range(sent)]

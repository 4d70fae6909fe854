"""Kafka client settings and admin helpers shared by every engine (Flink, Beam, plain loops)."""
from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

# Settings that matter for latency on both real Kafka and the embedded broker. The embedded broker
# answers a fetch only after fetch.wait.max.ms (real Kafka answers as soon as data is there), so
# a small value keeps latency low at the price of more fetch requests; on durable (s3) storage
# raise it (~500). Below ~3 ms its fetches stall: consumers at 1 ms stopped receiving for good,
# at 2 ms for ~10 s at a time (quiet machine, 2k records/s); 3-20 ms never did.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "fetch.wait.max.ms": 10,
    "fetch.min.bytes": 1,
    "session.timeout.ms": 6000,
    "queued.max.messages.kbytes": 65536,
}
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,   # acks=all, no duplicates from producer retries
    "linger.ms": 1,
    "batch.num.messages": 10000,
    "compression.type": "none",
    "message.timeout.ms": 30000,
}


def consumer_config(bootstrap_servers: str, group_id: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap_servers, "group.id": group_id, **CONSUMER_DEFAULTS, **(extra or {})}


def producer_config(bootstrap_servers: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS, **(extra or {})}


def wait_for_broker(bootstrap_servers: str, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request, or raise TimeoutError."""
    # log_level 0: connection refusals while the broker starts are expected, not worth a log line
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no Kafka broker answered at {bootstrap_servers} within {timeout_s}s")
            time.sleep(0.1)


def ensure_topics(bootstrap_servers: str, topics: dict[str, int], timeout_s: float = 30.0) -> None:
    """Create the topics that do not exist yet (name → partitions) and wait until they are visible."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    new = [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items() if name not in existing]
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout_s).items():
            try:
                future.result()
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    deadline = time.monotonic() + timeout_s
    while set(topics) - set(admin.list_topics(timeout=timeout_s).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {sorted(topics)} not visible after {timeout_s}s")
        time.sleep(0.1)


def partitions_of(bootstrap_servers: str, topic: str, timeout_s: float = 30.0) -> list[int]:
    """The partition ids of ``topic`` (raises if the topic does not exist).

    Lists all topics rather than asking for this one: a metadata request naming a topic
    auto-creates it on brokers that allow that (the embedded broker does), and a typo in a
    topic name must be an error, not a new empty topic."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    md = admin.list_topics(timeout=timeout_s).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise ValueError(f"topic {topic!r} does not exist on {bootstrap_servers}"
                         + (f": {md.error}" if md is not None and md.error else ""))
    return sorted(md.partitions)


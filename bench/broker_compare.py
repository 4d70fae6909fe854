"""Tansu and Apache Kafka side by side: the broker behaviours the project depends on, probed the
same way on both embedded brokers. Prints a table and writes bench/results/broker_compare.json.

Probes: time to start and to come back after ``kill -9``; the high watermark after N records;
how long a fetch waits when data arrives (consumer ``fetch.wait.max.ms=500``); whether aborted
and open transactions are hidden from ``read_committed`` readers; whether a metadata request
naming a topic creates it; whether an idempotent producer loses or duplicates acknowledged
records across a ``kill -9`` of the broker (Tansu on its durable s3:// storage, Kafka on disk).

    .venv/bin/python bench/broker_compare.py [--brokers tansu,kafka] [--restart-records 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from connectors.embedded.apache_kafka import ApacheKafkaBroker  # noqa: E402
from connectors.embedded.local_s3 import LocalS3  # noqa: E402
from connectors.embedded.tansu import EmbeddedBroker  # noqa: E402
from connectors.kafka.clients import consumer_config, ensure_topics, producer_config  # noqa: E402
from jobs.producer import produce  # noqa: E402


def start_broker(kind: str, workdir: Path, stack: ExitStack, durable: bool = False):
    """Kafka (always on disk); Tansu on memory:// (what the tests use) or, ``durable``, on s3://."""
    if kind == "kafka":
        return ApacheKafkaBroker(workdir / "kafka", log_path=workdir / "kafka.log")
    if not durable:
        return EmbeddedBroker(log_path=workdir / "tansu.log")
    s3 = stack.enter_context(LocalS3(workdir / "s3"))
    return EmbeddedBroker(storage=s3.storage_url, env=s3.broker_env(), log_path=workdir / "tansu-s3.log")


def topic(bs: str, partitions: int = 1) -> str:
    name = f"cmp-{uuid.uuid4().hex[:8]}"
    ensure_topics(bs, {name: partitions})
    return name


def high_watermark(bs: str, n: int = 1000) -> dict:
    t = topic(bs)
    produce(bs, t, [b"x"] * n)
    c = Consumer(consumer_config(bs, "hw"))
    low, high = c.get_watermark_offsets(TopicPartition(t, 0), timeout=30, cached=False)
    c.close()
    return {"records": n, "low": low, "high": high, "correct": (low, high) == (0, n)}


def fetch_wait(bs: str, rounds: int = 20, wait_ms: int = 500) -> dict:
    """Time from a record's acknowledgement to its arrival at a consumer that is already fetching."""
    t = topic(bs)
    c = Consumer(consumer_config(bs, "fw", {"fetch.wait.max.ms": wait_ms}))
    c.assign([TopicPartition(t, 0, 0)])
    p = Producer(producer_config(bs))
    c.consume(10, 1.0)
    lags = []
    for i in range(rounds):
        time.sleep(0.05 + (i % 5) * 0.037)          # land at varying points of the fetch cycle
        p.produce(t, str(i).encode())
        p.flush(30)
        acked = time.monotonic()
        got = []
        deadline = acked + 10
        while not got and time.monotonic() < deadline:
            got = [m for m in c.consume(10, 0.01) if m.error() is None]
        lags.append((time.monotonic() - acked) * 1000 if got else float("nan"))
    c.close()
    return {"fetch_wait_max_ms": wait_ms, "p50_ms": round(float(np.nanpercentile(lags, 50)), 1),
            "max_ms": round(float(np.nanmax(lags)), 1), "rounds": rounds}


def transactions(bs: str) -> dict:
    t = topic(bs)
    out: dict = {}
    try:
        tx = Producer(producer_config(bs, {"transactional.id": f"cmp-{uuid.uuid4().hex[:6]}"}))
        tx.init_transactions(30)
        tx.begin_transaction()
        for i in range(10):
            tx.produce(t, f"aborted-{i}".encode())
        tx.flush(30)
        tx.abort_transaction(30)
        tx.begin_transaction()
        for i in range(5):
            tx.produce(t, f"committed-{i}".encode())
        tx.commit_transaction(30)
        tx.begin_transaction()
        for i in range(3):
            tx.produce(t, f"open-{i}".encode())
        tx.flush(30)
    except Exception as exc:  # noqa: BLE001 - a broker may not support it: that is the finding
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    for level in ("read_committed", "read_uncommitted"):
        c = Consumer(consumer_config(bs, f"tx-{level}", {"isolation.level": level}))
        c.assign([TopicPartition(t, 0, 0)])
        seen: list[bytes] = []
        deadline = time.monotonic() + 10         # a bounded look: what becomes visible within 10 s
        while time.monotonic() < deadline:
            seen += [m.value() for m in c.consume(100, 0.2) if m.error() is None]
        c.close()
        out[level] = {kind: sum(v.startswith(kind.encode()) for v in seen) for kind in ("aborted", "committed", "open")}
    tx.abort_transaction(30)
    out["isolates"] = out["read_committed"] == {"aborted": 0, "committed": 5, "open": 0}
    return out


def named_metadata_creates(bs: str) -> bool:
    name = f"cmp-auto-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": bs})
    p = Producer(producer_config(bs))
    try:
        p.list_topics(topic=name, timeout=5)      # a producer's metadata request naming the topic
    except Exception:  # noqa: BLE001
        pass
    time.sleep(1)
    return name in admin.list_topics(timeout=10).topics


def kill_restart(broker, n: int) -> dict:
    """An idempotent producer (project defaults) sends n records at 2,000/s; kill -9 at a quarter,
    restart; count acknowledged records missing from the log and duplicates."""
    bs = broker.bootstrap_servers
    t = topic(bs, 2)
    values = [f"r{i}".encode() for i in range(n)]
    acked: list[str] = []
    errors: list = []
    sent = {"n": 0}
    th = threading.Thread(target=lambda: _catch(errors, lambda: acked.extend(produce(
        bs, t, values, rate=2000, on_progress=lambda k: sent.__setitem__("n", k),
        settings={"message.timeout.ms": 600_000}, flush_timeout_s=600))), daemon=True)
    th.start()
    while sent["n"] < n // 4 and th.is_alive():
        time.sleep(0.05)
    t0 = time.monotonic()
    broker.kill()
    broker.restart()
    restart_s = time.monotonic() - t0
    th.join(600)
    c = Consumer(consumer_config(bs, "kr", {"fetch.wait.max.ms": 100}))
    c.assign([TopicPartition(t, p, 0) for p in (0, 1)])
    msgs, idle = [], 0
    while idle < 25:                                # until 5 s without a new record
        got = [m for m in c.consume(1000, 0.2) if m.error() is None]
        msgs += got
        idle = 0 if got else idle + 1
    c.close()
    at = {f"{m.topic()}/{m.partition()}/{m.offset()}": m.value() for m in msgs}
    misplaced = sum(at.get(coord) != values[i] for i, coord in enumerate(acked))
    in_log = {m.value() for m in msgs}
    return {"records": n, "acknowledged": len(acked), "producer_errors": [str(e)[:200] for e in errors],
            "acknowledged_missing": sum(values[i] not in in_log for i in range(len(acked))),
            "acknowledged_not_at_acked_offset": misplaced, "in_log": len(msgs), "duplicates": len(msgs) - len({m.value() for m in msgs}),
            "restart_s": round(restart_s, 1)}


def _catch(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def probe(kind: str, restart_records: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"cmp-{kind}-") as d, ExitStack() as stack:
        broker = start_broker(kind, Path(d), stack)
        t0 = time.monotonic()
        stack.enter_context(broker)
        result = {"start_s": round(time.monotonic() - t0, 1)}
        bs = broker.bootstrap_servers
        result["high_watermark"] = high_watermark(bs)
        result["fetch_wait"] = fetch_wait(bs)
        result["transactions"] = transactions(bs)
        result["named_metadata_creates_topic"] = named_metadata_creates(bs)
        if restart_records:
            if kind == "tansu":          # memory:// loses everything on restart: use its durable storage
                broker.stop()
                broker = stack.enter_context(start_broker(kind, Path(d), stack, durable=True))
            result["kill_restart"] = kill_restart(broker, restart_records)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", default="tansu,kafka")
    parser.add_argument("--restart-records", type=int, default=10_000, help="0: skip the kill -9 probe")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "broker_compare.json")
    args = parser.parse_args()
    results = {kind: probe(kind, args.restart_records) for kind in args.brokers.split(",")}
    results["_machine"] = {"cpus": os.cpu_count(), "load": os.getloadavg(), "platform": platform.platform()}
    for kind, r in results.items():
        if not kind.startswith("_"):
            print(f"--- {kind}")
            for key, value in r.items():
                print(f"  {key}: {value}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

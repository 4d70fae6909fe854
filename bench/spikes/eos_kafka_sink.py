"""Spike (issue #15 part 3): Flink's transactional KafkaSink fed by a Python operator, on PyFlink 2.3
with flink-sql-connector-kafka 5.0.0-2.2 (built for Flink 2.2) against the embedded Apache Kafka.

A bounded job writes N records through a Python map (slowed down so several checkpoints happen)
into KafkaSink(DeliveryGuarantee.EXACTLY_ONCE). Meanwhile a read_committed and a read_uncommitted
reader count what they can see: committed records should appear only in steps, when a checkpoint
completes and the sink commits its transaction. At the end: exactly N committed, no duplicates.

    .venv/bin/python bench/spikes/eos_kafka_sink.py [--records 3000]
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from connectors.embedded.apache_kafka import ApacheKafkaBroker  # noqa: E402
from connectors.embedded.maven import jars  # noqa: E402
from connectors.kafka.clients import consumer_config, ensure_topics  # noqa: E402


def job(bootstrap: str, topic: str, records: int, jar: Path) -> None:
    """The Flink job (run in a child process: PyFlink's gateway and MiniCluster)."""
    from pyflink.common import Configuration, Row, Types
    from pyflink.common.serialization import RowFieldExtractorSchema
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.base import DeliveryGuarantee
    from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink

    conf = Configuration()
    for key in ("python.executable", "python.client.executable"):   # the workers need this venv
        conf.set_string(key, sys.executable)
    conf.set_string("restart-strategy.type", "none")                  # a spike: fail, don't loop
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.add_jars(jar.as_uri())
    env.set_parallelism(1)
    env.enable_checkpointing(1000)

    def to_row(i: int) -> Row:
        time.sleep(0.002)                  # a few seconds of work: several checkpoints
        return Row(str(i % 7).encode(), f"v{i}".encode())

    rows = env.from_collection(list(range(records)), type_info=Types.INT()).map(
        to_row, output_type=Types.ROW([Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())]))
    sink = (KafkaSink.builder()
            .set_bootstrap_servers(bootstrap)
            .set_record_serializer(KafkaRecordSerializationSchema.builder()
                                   .set_topic(topic)
                                   .set_key_serialization_schema(RowFieldExtractorSchema(0))
                                   .set_value_serialization_schema(RowFieldExtractorSchema(1))
                                   .build())
            .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
            .set_transactional_id_prefix(f"spike-{uuid.uuid4().hex[:6]}")
            .set_property("transaction.timeout.ms", "600000")     # <= the broker's transaction.max.timeout.ms
            .build())
    rows.sink_to(sink)
    env.execute("eos-kafka-sink-spike")


def count(bootstrap: str, topic: str, level: str, seen: dict, stop: threading.Event) -> None:
    c = Consumer(consumer_config(bootstrap, f"spike-{level}", {"isolation.level": level}))
    c.assign([TopicPartition(topic, 0, 0)])
    while not stop.is_set():
        got = [m.value() for m in c.consume(1000, 0.1) if m.error() is None]
        if got:
            seen.setdefault("values", []).extend(got)
            seen.setdefault("steps", []).append((round(time.monotonic() - seen["t0"], 2), len(seen["values"])))
    c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--child", nargs=3, metavar=("BOOTSTRAP", "TOPIC", "JAR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop the broker on the way out
    if args.child:
        job(args.child[0], args.child[1], args.records, Path(args.child[2]))
        return
    jar = next(jars("flink-kafka").glob("flink-sql-connector-kafka-*.jar"))
    with ApacheKafkaBroker(heap="384m") as kafka:
        topic = f"eos-{uuid.uuid4().hex[:6]}"
        ensure_topics(kafka.bootstrap_servers, {topic: 1})
        stop = threading.Event()
        views = {level: {"t0": time.monotonic()} for level in ("read_committed", "read_uncommitted")}
        readers = [threading.Thread(target=count, args=(kafka.bootstrap_servers, topic, lvl, views[lvl], stop))
                   for lvl in views]
        for r in readers:
            r.start()
        started = time.monotonic()
        done = subprocess.run([sys.executable, __file__, "--records", str(args.records),
                               "--child", kafka.bootstrap_servers, topic, str(jar)],
                              capture_output=True, text=True, timeout=900)
        print(f"job exit {done.returncode} after {time.monotonic() - started:.1f}s")
        if done.returncode:
            print(done.stdout[-3000:], done.stderr[-5000:])
        time.sleep(3)
        stop.set()
        for r in readers:
            r.join()
        for level, v in views.items():
            values = v.get("values", [])
            print(f"{level}: {len(values)} records, {len(values) - len(set(values))} duplicates; "
                  f"arrival steps (s since start, cumulative): {v.get('steps', [])[:30]}")
        committed = views["read_committed"].get("values", [])
        ok = sorted(committed) == sorted(f"v{i}".encode() for i in range(args.records))
        print(f"exactly the {args.records} records committed, once each: {ok}")


if __name__ == "__main__":
    main()

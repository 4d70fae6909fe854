"""`streamscore consume`: print a prediction or dead-letter topic as JSON lines, optionally
de-duplicated by prediction id (the job's output is at-least-once)."""
from __future__ import annotations

import argparse
import sys
import time
import uuid



def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "consume", help="print predictions (or dead letters) as JSON lines, de-duplicated on request",
        description="Read a topic the scoring job writes and print one JSON object per line. "
                    "Predictions are printed as written; dead letters (--dead-letters) as "
                    "{source, reason, detail, value}. The job delivers at least once: after a "
                    "crash some predictions are written twice with the same prediction_id; "
                    "--dedupe prints each prediction_id once. Counts go to stderr at the end.")
    parser.add_argument("topic", nargs="?", help="topic to read (default: kafka.output_topic, or "
                        "kafka.dead_letter_topic with --dead-letters, from --config)")
    parser.add_argument("--config", "-c", help="job configuration YAML: bootstrap servers and topic names")
    parser.add_argument("--bootstrap-servers", "-b", help="Kafka bootstrap servers (overrides --config)")
    parser.add_argument("--dead-letters", action="store_true", help="the topic holds dead letters")
    parser.add_argument("--dedupe", action="store_true", help="print each prediction_id (dead letters: "
                        "each source record) once")
    parser.add_argument("--dedupe-window", type=int, default=1_000_000, metavar="N",
                        help="how many recent ids --dedupe remembers (default: 1,000,000)")
    parser.add_argument("--from", dest="start", choices=["beginning", "end", "committed"], default="beginning",
                        help="where to start: beginning (default), end (new records only), or the "
                        "offsets committed by --group")
    parser.add_argument("--group", help="consumer group; offsets are committed as lines are printed")
    parser.add_argument("--max-messages", type=int, metavar="N", help="stop after printing N records")
    parser.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                        help="stop when nothing new arrived for S seconds (default: run until Ctrl-C)")
    parser.set_defaults(func=_consume)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    servers, topic = args.bootstrap_servers, args.topic
    if args.config:
        from jobs.config import load_config
        kafka = load_config(args.config).kafka
        servers = servers or kafka.bootstrap_servers
        topic = topic or (kafka.dead_letter_topic if args.dead_letters else kafka.output_topic)
    if not servers or not topic:
        raise SystemExit("streamscore consume: give a topic and --bootstrap-servers, or --config job.yaml")
    return servers, topic


def dead_letter_record(message) -> dict:
    """A dead-letter Kafka record as a JSON-able dict. The original bytes are printed as text
    when they are UTF-8, else as hex (``value_encoding: hex``)."""
    from connectors.dead_letter import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER

    headers = {k: v.decode("utf-8", "replace") for k, v in (message.headers() or [])}
    record = {"source": headers.get(SOURCE_HEADER), "reason": headers.get(REASON_HEADER),
              "detail": headers.get(DETAIL_HEADER), "value": None}
    value = message.value()
    if value is not None:
        try:
            record["value"] = value.decode("utf-8")
        except UnicodeDecodeError:
            record["value"], record["value_encoding"] = value.hex(), "hex"
    return record


def _consume(args: argparse.Namespace) -> int:
    import orjson
    from confluent_kafka import Consumer, TopicPartition

    from connectors.kafka.clients import consumer_config, partitions_of
    from connectors.kafka.dedupe import Deduplicator

    servers, topic = _target(args)
    group = args.group or f"streamscore-consume-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(consumer_config(servers, group, {"enable.auto.commit": bool(args.group),
                                                         "enable.auto.offset.store": False}))
    if args.start == "committed":
        if not args.group:
            raise SystemExit("streamscore consume: --from committed needs --group")
        consumer.subscribe([topic])
    else:
        offset = {"beginning": -2, "end": -1}[args.start]
        consumer.assign([TopicPartition(topic, p, offset) for p in partitions_of(servers, topic)])
    dedupe = Deduplicator(args.dedupe_window) if args.dedupe else None
    printed = read = 0
    out = sys.stdout.buffer
    last_new = time.monotonic()
    try:
        while args.max_messages is None or printed < args.max_messages:
            messages = consumer.consume(500, 0.5)
            if not messages and args.idle_timeout is not None and time.monotonic() - last_new > args.idle_timeout:
                break
            for m in messages:
                if m.error() is not None:
                    continue
                last_new = time.monotonic()
                read += 1
                if args.dead_letters:
                    record = dead_letter_record(m)
                    key = record["source"]
                else:
                    record = orjson.loads(m.value())
                    key = record.get("prediction_id")
                if args.group:
                    consumer.store_offsets(m)
                if dedupe is not None and key is not None and not dedupe.first_time(key):
                    continue
                out.write(orjson.dumps(record) + b"\n")
                printed += 1
                if args.max_messages is not None and printed >= args.max_messages:
                    break
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    dropped = dedupe.duplicates if dedupe else 0
    print(f"read {read:,} records from {topic}, printed {printed:,}, dropped {dropped:,} duplicates",
          file=sys.stderr)
    return 0

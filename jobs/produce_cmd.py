"""`streamscore produce`: send events (JSON lines) to the job's input topic."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "produce", help="send JSON-lines events to the input topic",
        description="Send each line of FILE (or stdin with -) as one record to kafka.input_topic of "
                    "--config, keyed by events.key_field when the line is a JSON object that has it. Lines "
                    "are sent as they are: the job dead-letters the malformed ones.")
    parser.add_argument("file", help="JSON-lines file, or - for stdin")
    parser.add_argument("--config", "-c", help="job YAML: bootstrap servers, input topic, key field")
    parser.add_argument("--topic", help="topic (default: kafka.input_topic)")
    parser.add_argument("--bootstrap-servers", "-b", help="Kafka bootstrap servers (overrides --config)")
    parser.set_defaults(func=_produce)


def _produce(args: argparse.Namespace) -> int:
    import orjson
    from confluent_kafka import Producer

    from connectors.kafka.clients import producer_config
    from jobs.config import load_config
    from jobs.errors import UserError
    from jobs.preflight import check_topics

    cfg = load_config(args.config, [f"kafka.bootstrap_servers={args.bootstrap_servers}"] if args.bootstrap_servers else [])
    topic = args.topic or cfg.kafka.input_topic
    cfg.kafka.input_topic = topic
    cfg.sink.kind = "files"                       # only the input topic needs to exist here
    check_topics(cfg)
    producer = Producer(producer_config(cfg.kafka.bootstrap_servers, cfg.kafka.producer))
    failed: list = []
    key_field = cfg.events.key_field
    stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    sent = 0
    with stream:
        for line in stream:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            key = None
            try:
                obj = orjson.loads(line)
                if isinstance(obj, dict) and obj.get(key_field) is not None:
                    key = str(obj[key_field]).encode()
            except orjson.JSONDecodeError:
                pass
            while True:
                try:
                    producer.produce(topic, line, key=key, on_delivery=lambda err, _m: err and failed.append(err))
                    break
                except BufferError:
                    producer.poll(0.05)
            sent += 1
    left = producer.flush(30)
    if failed or left:
        raise UserError(f"{len(failed) + left} of {sent} records were not acknowledged by "
                        f"{cfg.kafka.bootstrap_servers}: {failed[0] if failed else 'timed out'}")
    print(f"sent {sent:,} records to {topic}", file=sys.stderr)
    return 0

"""The broker's floor: the plain loop's Kafka plumbing with no work in between. Polls each input
partition as ``bench.plain_loop`` does, and for every record writes a minimal prediction
(``prediction_id`` = the input coordinates, ``event_id``, ``event_ts``, ``scored_ts``) through the
same KafkaBatchWriter: no features, no model, no Arrow. Its latency is what the broker, the
clients and the polling cost by themselves (a record that is not a JSON object with ``id`` and
``ts`` becomes an ``invalid_json`` dead letter). Runs until killed.
``python -m bench.echo --config job.yaml``"""
from __future__ import annotations

import argparse
import time

import orjson

from connectors.dead_letter import DeadLetter, Reason
from bench.plain_loop import poll_and_write
from connectors.kafka.partition_reader import RecordChunk
from jobs.config import load_config


def echo_records(chunk: RecordChunk) -> tuple[list[bytes], list[DeadLetter]]:
    """One minimal prediction per record of ``chunk``, or a dead letter where it cannot be read."""
    now_ms = time.time() * 1000
    values, dead = [], []
    for offset, value in zip(chunk.offsets, chunk.values):
        source = f"{chunk.topic}/{chunk.partition}/{offset}"
        try:
            event = orjson.loads(value)
            values.append(orjson.dumps({"prediction_id": source, "event_id": event["id"],
                                        "event_ts": event["ts"], "scored_ts": now_ms}))
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            dead.append(DeadLetter(value, Reason.INVALID_JSON, f"echo: {exc}", chunk.topic, chunk.partition, offset))
    return values, dead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    cfg = load_config(parser.parse_args().config)

    def records_of(chunk: RecordChunk) -> tuple[list[bytes], None, list[DeadLetter]]:
        values, dead = echo_records(chunk)
        return values, None, dead
    poll_and_write(cfg, records_of)


if __name__ == "__main__":
    main()

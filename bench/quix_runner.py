"""The scoring job on Quix Streams (3.x), written the idiomatic way: an Application, a
StreamingDataFrame over the JSON input topic, ``sdf.apply`` scoring each message (Quix Streams
processes one message at a time; it has no batch operator) and ``sdf.to_topic`` producing the
prediction. Consumer-group offsets are committed (and the producer flushed) every
``flink.checkpoint_interval_ms``: at-least-once. Runs in ``.venv-bench``; until killed.

    python -m bench.quix_runner --config job.yaml
"""
from __future__ import annotations

import argparse
import sys

if __name__ == "__main__":
    from bench.competitors import use_bench_venv
    use_bench_venv()

from quixstreams import Application, message_context  # noqa: E402

from bench.competitors import state_dir  # noqa: E402
from bench.competitors.per_record import PerRecordScorer  # noqa: E402
from connectors.kafka.clients import CONSUMER_DEFAULTS, PRODUCER_DEFAULTS  # noqa: E402
from jobs.config import JobConfig, load_config  # noqa: E402

# settings Quix Streams manages itself (offset commits, partition assignment)
_MANAGED = {"enable.auto.commit", "enable.auto.offset.store"}


def app(cfg: JobConfig) -> Application:
    k = cfg.kafka
    consumer = {key: v for key, v in {**CONSUMER_DEFAULTS, **k.consumer}.items() if key not in _MANAGED}
    application = Application(
        broker_address=k.bootstrap_servers, consumer_group=f"{k.group_id}-quix-{k.input_topic}",
        auto_offset_reset=k.start_from, commit_interval=cfg.flink.checkpoint_interval_ms / 1000,
        consumer_extra_config=consumer, producer_extra_config={**PRODUCER_DEFAULTS, **k.producer}, consumer_poll_timeout=0.1,
        auto_create_topics=False, use_changelog_topics=False, loglevel="WARNING",
        state_dir=state_dir(cfg.flink.checkpoint_dir, "quix-state"))
    scorer = PerRecordScorer(cfg)

    def score(event: dict) -> dict:
        ctx = message_context()
        return scorer(event, f"{ctx.topic}/{ctx.partition}/{ctx.offset}")

    events = application.topic(k.input_topic, value_deserializer="json")
    predictions = application.topic(k.output_topic, key_serializer="str", value_serializer="json")
    application.dataframe(events).apply(score).to_topic(predictions, key=lambda p: str(p["entity_id"]))
    return application


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    app(load_config(parser.parse_args().config)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

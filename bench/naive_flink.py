"""The baseline to beat: a PyFlink DataStream job written the straightforward way, one event per
record: parse the JSON → look up that entity's features → score one row → produce one record,
each a Python ``map`` (process mode, checkpoints on: the same Flink settings as the job).

No Flink Kafka connector jar can be had here, so the records come from the job's own Python
Kafka source, split back into single records (what ``KafkaSource`` with a string schema would
emit). The producer is asynchronous (``produce`` + ``poll(0)``, flushed on close), as in the
confluent-kafka examples: this is more lenient than the job's sink, which waits for the
broker's acknowledgement of every micro-batch. Runs until killed.

    python -m bench.naive_flink --config job.yaml
"""
from __future__ import annotations

import argparse
import sys

import orjson
from confluent_kafka import Producer
from pyflink.common import Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.functions import FlatMapFunction, MapFunction, RuntimeContext

from bench.competitors.per_record import PerRecordScorer
from connectors.events import OFFSET_COLUMN, RAW_COLUMN
from connectors.kafka.clients import producer_config
from jobs.config import JobConfig, load_config
from jobs.score_stream import flink_configuration, micro_batches
from operators.batch import MicroBatch
from operators.flink import discard


class SplitIntoRecords(FlatMapFunction):
    """A micro-batch → its records one by one: (``topic/partition/offset``, raw JSON)."""

    def flat_map(self, batch: MicroBatch):
        prefix = f"{batch.topic}/{batch.partition}/"
        for offset, raw in zip(batch.events.column(OFFSET_COLUMN).to_pylist(),
                               batch.events.column(RAW_COLUMN).to_pylist()):
            yield prefix + str(offset), raw.decode()


class Score(MapFunction):
    """Parse one event, look up its features, score it."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._scorer = PerRecordScorer(self.cfg)

    def map(self, record):
        source, raw = record
        return self._scorer(orjson.loads(raw), source)

    def close(self) -> None:
        if hasattr(self, "_scorer"):
            self._scorer.close()


class Produce(MapFunction):
    """Write one prediction to Kafka."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg

    def open(self, ctx: RuntimeContext) -> None:
        k = self.cfg.kafka
        self._producer = Producer(producer_config(k.bootstrap_servers, k.producer))

    def map(self, prediction: dict) -> int:
        self._producer.produce(self.cfg.kafka.output_topic, orjson.dumps(prediction), str(prediction["entity_id"]))
        self._producer.poll(0)
        return 1

    def close(self) -> None:
        if hasattr(self, "_producer"):
            self._producer.flush(30)


def build(env: StreamExecutionEnvironment, cfg: JobConfig) -> None:
    discard(micro_batches(env, cfg)
            .flat_map(SplitIntoRecords(), Types.TUPLE([Types.STRING(), Types.STRING()])).name("records")
            .map(Score(cfg)).name("score")
            .map(Produce(cfg), Types.INT()).name("produce"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    cfg = load_config(parser.parse_args().config)
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(cfg))
    # the functions must come from the importable module, not __main__ (cloudpickle would ship
    # __main__'s classes by value, with their globals, and fails on the Kafka client type)
    from bench import naive_flink
    naive_flink.build(env, cfg)
    env.execute(f"{cfg.job_name}-naive")
    return 0


if __name__ == "__main__":
    sys.exit(main())

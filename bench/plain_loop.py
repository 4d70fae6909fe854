"""The practical ceiling: one Python process, no engine, the same work as the Flink job
(poll a batch → decode → Plasma lookup → ONNX score → produce and wait for acks), calling the
very same steps. Runs until killed. ``python -m bench.plain_loop --config job.yaml``"""
from __future__ import annotations

import argparse
from typing import Callable

from connectors.feature_store import open_store
from connectors.kafka.clients import consumer_config, partitions_of, producer_config
from connectors.kafka.partition_reader import PartitionReader, RecordChunk
from connectors.kafka.writer import KafkaBatchWriter
from jobs.config import JobConfig, load_config
from model_formats import load_model
from operators import steps


class ChunkScorer:
    """Raw records of one partition → scored micro-batch (decode, lookup, join, score): the
    job's steps in one call, for engines that hand over batches (this loop, Bytewax)."""

    def __init__(self, cfg: JobConfig) -> None:
        self.schema = cfg.events.schema()
        self.decoder = cfg.events.decoder_spec().build()
        self.store = open_store(cfg.features.store)
        self.missing = cfg.features.missing_policy()
        self.model = load_model(cfg.model.path, intra_op_num_threads=cfg.model.intra_op_threads)

    def __call__(self, chunk: RecordChunk) -> steps.ScoredBatch:
        batch = steps.decode(self.decoder, chunk)
        if batch.events.num_rows:
            features, found = self.store.lookup(steps.lookup_keys(batch, self.schema.key_field))
            batch = steps.join_features(batch, features, found, self.missing)
        return steps.score_batch(batch, self.model, self.schema)


def poll_and_write(cfg: JobConfig, records_of: Callable[[RecordChunk], tuple[list, list | None, list]]) -> None:
    """Poll every input partition in turn and write what ``records_of(chunk)`` makes of each
    chunk (values, keys, dead letters) through one KafkaBatchWriter, until killed: the loop's
    plumbing, shared with ``bench.echo`` so its floor measures exactly this."""
    k = cfg.kafka
    writer = KafkaBatchWriter(producer_config(k.bootstrap_servers, k.producer), k.output_topic, k.dead_letter_topic)
    readers = {p: PartitionReader(consumer_config(k.bootstrap_servers, k.group_id, k.consumer), k.input_topic, p, k.start_from)
               for p in partitions_of(k.bootstrap_servers, k.input_topic)}
    offsets: dict[int, int | None] = {p: None for p in readers}
    while True:
        for p, reader in readers.items():
            chunk = reader.read(offsets[p], cfg.batch.max_events, 0.001)
            if not chunk.offsets:
                continue
            offsets[p] = chunk.next_offset
            writer.write(*records_of(chunk))


def scored_records(score: ChunkScorer) -> Callable[[RecordChunk], tuple[list, list | None, list]]:
    """The job's steps on a chunk, as Kafka records: predictions (values, keys) and dead letters."""
    def records_of(chunk: RecordChunk) -> tuple[list, list | None, list]:
        scored = score(chunk)
        return (*steps.prediction_records(scored), scored.dead_letters)
    return records_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    cfg = load_config(parser.parse_args().config)
    poll_and_write(cfg, scored_records(ChunkScorer(cfg)))


if __name__ == "__main__":
    main()

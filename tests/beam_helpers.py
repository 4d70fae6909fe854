"""Helpers for the Beam tests: bounded pipeline runs over the input records a test produced, and
variants of the demo model."""
from __future__ import annotations

import pickle
from pathlib import Path

import apache_beam as beam
import onnx
from apache_beam.options.pipeline_options import PipelineOptions

from connectors.kafka.clients import partitions_of
from jobs.config import JobConfig
from jobs.tally import OutputReader, Tally


def stop_offsets(coords: list[str], partitions: list[int] = ()) -> dict[int, int]:
    """Per partition, the offset after the last of these input coordinates (topic/partition/offset);
    0 for each of ``partitions`` none of them is in (the tests' topics are fresh: nothing to read
    there). Every partition needs a stop offset, or the read is unbounded and never ends — which
    happened when the producer's sticky partitioner put every record in one partition."""
    stops: dict[int, int] = {p: 0 for p in partitions}
    for coord in coords:
        partition, offset = map(int, coord.rsplit("/", 2)[1:])
        stops[partition] = max(stops.get(partition, 0), offset + 1)
    return stops


def run_bounded(cfg: JobConfig, coords: list[str], model_updates=None, **build_options) -> None:
    """Run the Beam job's pipeline on the DirectRunner over the partitions' offsets up to the last
    of ``coords``, to completion. ``model_updates``: pipeline → side-input PCollection."""
    from jobs.beam_score import build

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        partitions = partitions_of(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic)
        build(p, cfg, stop_offsets=stop_offsets(coords, partitions), model_updates=model_updates and model_updates(p),
              **build_options)


def read_outputs(cfg: JobConfig, coords: list[str], timeout_s: float = 60) -> Tally:
    """Predictions and dead letters on the job's output topics, once every input is accounted for."""
    reader = OutputReader(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, cfg.kafka.dead_letter_topic).start()
    try:
        return reader.wait_for(set(coords), timeout_s=timeout_s, stall_s=timeout_s / 2)
    finally:
        reader.stop()


def onnx_variant(source: Path, target: Path, *, version: str | None = None, fixed_batch: int | None = None,
                 name: str | None = None) -> Path:
    """A copy of an ONNX model with another declared version, or with its batch dimension fixed
    (onnxruntime then refuses every other batch size at run time: a real runtime failure)."""
    proto = onnx.load(str(source))
    for key, value in (("version", version), ("name", name)):
        if value is not None:
            for prop in proto.metadata_props:
                if prop.key == key:
                    prop.value = value
    if fixed_batch is not None:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = fixed_batch
    onnx.save(proto, str(target))
    return target


def collect(pcoll, path: Path, label: str) -> None:
    """Gather a PCollection into one pickle file (read it back with ``load``)."""
    (pcoll | f"{label}Pickle" >> beam.Map(pickle.dumps) | f"{label}List" >> beam.combiners.ToList()
     | f"{label}Write" >> beam.Map(lambda items: path.write_bytes(pickle.dumps([pickle.loads(i) for i in items]))))


def load(path: Path) -> list:
    return pickle.loads(path.read_bytes())

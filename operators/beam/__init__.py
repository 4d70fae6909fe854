"""Apache Beam adapters: the streamscore pieces as stock-Beam building blocks.

For your own pipeline of rows (``beam.Row``):

* ``FeatureStoreEnrichmentHandler`` (``enrichment``): an EnrichmentSourceHandler for stock
  ``Enrichment`` over any feature-store URI;
* ``StreamscoreModelHandler`` (``inference``): a ModelHandler for stock ``RunInference`` (PMML,
  ONNX, skops); ``Rejected`` is the inference of a row that cannot be scored and
  ``SplitRejected`` routes those to their own output.

The streamscore job's pipeline (``pipeline.ScoreEvents``) works on micro-batches with
``EnrichMicroBatches`` and ``MicroBatchModelHandler``; ``kafka_io`` reads Kafka partitions
(offsets in the restriction) and writes predictions and dead letters.

To adapt another engine: call ``operators.steps`` (decode, join_features, score_batch) from
the engine's operators, as ``operators/flink/`` and this package do; nothing else is needed.
"""
from operators.beam.enrichment import EnrichMicroBatches, FeatureStoreEnrichmentHandler
from operators.beam.inference import MicroBatchModelHandler, Rejected, SplitRejected, StreamscoreModelHandler

__all__ = ["FeatureStoreEnrichmentHandler", "StreamscoreModelHandler", "Rejected", "SplitRejected",
           "EnrichMicroBatches", "MicroBatchModelHandler"]

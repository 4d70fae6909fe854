"""Apache Beam adapters: the streamscore pieces as stock-Beam building blocks.

* ``inference.StreamscoreModelHandler``: a ModelHandler for ``RunInference`` (PMML, ONNX, skops).
* ``enrichment.FeatureStoreEnrichmentHandler``: an EnrichmentSourceHandler for ``Enrichment``.
* ``kafka_io``: a splittable-DoFn Kafka reader (offsets in the restriction) and a Kafka writer.
* ``pipeline``: decode → Enrichment → RunInference as one ``ScoreEvents`` transform, and sinks.

Like the Flink operators, these are thin: the work is done by ``operators.steps``,
``connectors`` and ``model_formats``.
"""

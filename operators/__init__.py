"""The pipeline's operators: ``steps.py`` does the work on micro-batches (decode, join features,
score with one or several models, prediction records), independent of any engine; ``flink/`` and
``beam/`` are thin adapters that call it. ``batch.MicroBatch`` is the unit that flows.

To add an engine adapter: a folder ``operators/<engine>/`` whose operators call ``steps`` (and
``connectors.retry`` for lookups), plus the wiring in ``jobs/`` (as ``jobs/score_stream.py`` for
Flink, ``jobs/beam_score.py`` for Beam); ``bench/plain_loop.py`` is the smallest example.
"""

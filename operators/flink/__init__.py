"""Thin PyFlink adapters over `operators.steps` (engine-agnostic) and `connectors`: the Kafka
source, async enrichment, scoring, the Kafka and file sinks, thread-safe metrics, and
``worker.py`` (the Python worker process's settings, made once per process)."""
from pyflink.datastream import DataStream
from pyflink.datastream.connectors import Sink


def discard(written: DataStream):
    """End a stream whose Python operator already did the writing (Flink wants a terminal sink)."""
    return written.sink_to(Sink("org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink")).name("done")

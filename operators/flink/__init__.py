"""Thin PyFlink adapters over `operators.steps` (engine-agnostic) and `connectors`."""
from pyflink.datastream import DataStream
from pyflink.datastream.connectors import Sink


def discard(written: DataStream):
    """End a stream whose Python operator already did the writing (Flink wants a terminal sink)."""
    return written.sink_to(Sink("org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink")).name("done")

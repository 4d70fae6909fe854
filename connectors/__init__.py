"""I/O connectors: Kafka, feature stores, file sinks. They know nothing of models."""

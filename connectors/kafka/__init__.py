"""Kafka I/O in Python (confluent-kafka), usable from Flink, Beam and plain loops."""

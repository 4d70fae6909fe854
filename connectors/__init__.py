"""I/O connectors: Kafka, feature stores, file sinks. They know nothing of models."""
import pyarrow_hotfix  # noqa: F401  (CVE-2023-47248: refuse arbitrary-object IPC extension types in pyarrow < 14.0.1)

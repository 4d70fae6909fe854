"""I/O connectors: Kafka, event decoding, dead letters, feature stores, file sinks, and the one
retry policy (``retry.py``). They know nothing of models or engines. ``embedded/`` is the local
stand-in stack (broker, S3, Plasma server) for the demo and tests, never used in production.

To add a feature-store backend: one module in ``feature_store/`` and one line in
``feature_store.options.BACKENDS`` (see ``connectors/feature_store/README.md``, "Adding a backend").
"""
import pyarrow_hotfix  # noqa: F401  (CVE-2023-47248: refuse arbitrary-object IPC extension types in pyarrow < 14.0.1)

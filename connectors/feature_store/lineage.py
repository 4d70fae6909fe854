"""Which feature snapshot answered a lookup: every answer's schema metadata names it as
``name@version`` (the store's name and version, or the registry snapshot it was materialized
from), so a prediction can name the exact features that made it."""
from __future__ import annotations

import pyarrow as pa

LINEAGE_KEY = b"streamscore.features"


def lineage_of(features: pa.RecordBatch) -> str:
    """``name@version`` of the snapshot that answered a lookup ("" when the answer does not say)."""
    meta = features.schema.metadata
    return meta.get(LINEAGE_KEY, b"").decode() if meta else ""


def tag_lineage(batch: pa.RecordBatch, lineage: str) -> pa.RecordBatch:
    """``batch`` naming the snapshot it was read from (schema metadata; no data copied)."""
    return batch.replace_schema_metadata({LINEAGE_KEY: lineage.encode()})

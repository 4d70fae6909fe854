"""Small pieces the Beam adapters share."""
from __future__ import annotations

from typing import Any, Mapping

METRICS_NAMESPACE = "streamscore"   # Beam metrics of the streamscore transforms live under this


def as_dict(row: Any) -> Mapping[str, Any]:
    """A row element (dict, ``beam.Row``, NamedTuple) as a mapping."""
    if isinstance(row, Mapping):
        return row
    if hasattr(row, "_asdict"):
        return row._asdict()
    return vars(row)

"""One event at a time: the work of the scoring job, the way per-record frameworks (and a
newcomer's PyFlink job) do it: look up this event's entity in the feature store, score one row
with the model, encode one prediction. Same store, same model, same prediction fields as the
micro-batched job."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from connectors.feature_store import lineage_of, open_store
from jobs.config import JobConfig
from model_formats import LABEL, SCORE, load_model
from operators.steps import CHAMPION


class PerRecordScorer:
    """``scorer(event, source)`` → the prediction (PREDICTION_FIELDS) for one decoded event
    read from input coordinates ``source`` (``topic/partition/offset``)."""

    def __init__(self, cfg: JobConfig) -> None:
        self.schema = cfg.events.schema()
        self.store = open_store(cfg.features.store)
        self.model = load_model(cfg.model.path, intra_op_num_threads=cfg.model.intra_op_threads)
        self.inputs = self.model.schema.input_names

    def __call__(self, event: dict, source: str) -> dict:
        s = self.schema
        entity = event[s.key_field]
        features, found = self.store.lookup(np.array([entity], dtype=np.int64))
        if not found[0]:
            raise KeyError(f"entity {entity} not in the feature store")
        names = features.schema.names
        row = pa.RecordBatch.from_arrays(
            [features.column(n) if n in names else pa.array([event[n]]) for n in self.inputs], names=self.inputs)
        out = self.model.predict(row)
        return {"prediction_id": source, "event_id": event[s.id_field], "entity_id": entity,
                "score": float(out.column(SCORE)[0].as_py()), "label": out.column(LABEL)[0].as_py(),
                "model": self.model.name, "model_version": self.model.version,
                "features": lineage_of(features), "role": CHAMPION,
                "event_ts": event[s.timestamp_field], "scored_ts": int(time.time() * 1000)}

    def close(self) -> None:
        self.model.close()
        self.store.close()

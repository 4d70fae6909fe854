"""Helpers for tests that run the scoring job against the shared embedded stack."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import onnxruntime as ort
import orjson

from jobs import demo_data


def offline_scores(model_path, features, events_by_id: dict[str, dict], event_ids: list[str]) -> np.ndarray:
    """Score the events offline: the same model, the same features table, no Flink, no Kafka."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    entity = np.array([events_by_id[i]["entity_id"] for i in event_ids])
    amount = np.array([events_by_id[i]["amount"] for i in event_ids], dtype=np.float64)
    key_col = features.column("entity_id").to_numpy()
    rows = np.searchsorted(key_col, entity)
    assert (key_col[rows] == entity).all()
    matrix = np.column_stack([amount.astype(np.float32)] +
                             [features.column(n).to_numpy()[rows] for n in demo_data.FEATURE_NAMES]).astype(np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: matrix})
    probabilities = outputs[1]
    return probabilities[:, 1].astype(np.float64)


def decode_events(records: list) -> dict[str, dict]:
    """Good events by id (records are dicts already stamped, or raw bytes)."""
    out = {}
    for r in records:
        if isinstance(r, dict):
            out[r["id"]] = r
        else:
            try:
                obj = orjson.loads(r)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "id" in obj:
                out.setdefault(obj["id"], obj)
    return out


def read_committed(path, column: str) -> list:
    """One column of every committed Parquet file under ``path`` (what a pyarrow.dataset reader sees)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet", partitioning="hive") if path.exists() else None
    return dataset.to_table(columns=[column]).column(column).to_pylist() if dataset and dataset.files else []


def produce_and_account(cfg, job, reader, records: list, reasons: dict[int, str]) -> tuple[list[str], object, list[str]]:
    """Produce ``records`` to the job's input and wait until each is in the output or the dead
    letters exactly once, the bad ones (``reasons``: position → reason) dead-lettered as such:
    (input coordinates, the tally, the coordinates that were predicted, in input order)."""
    from jobs.producer import produce

    k = cfg.kafka
    coords = produce(k.bootstrap_servers, k.input_topic, records, encode=demo_data.encode, settings=k.producer)
    tally = reader.wait_for(set(coords), timeout_s=300, stall_s=120, check=job.check_alive)
    assert not tally.missing(set(coords)) and not tally.duplicate_ids & set(coords)
    assert sorted(tally.dead_letters[coords[i]] for i in reasons) == sorted(reasons.values())
    return coords, tally, [c for c in coords if c in tally.predictions]


def probe_until(cfg, entities: int, done: Callable[[], bool], what: str, *, events: int, seed: int,
                timeout_s: float = 120) -> None:
    """Produce ``events`` probe events a second into the job's input until ``done()`` (a job's
    challengers load on threads of their own after it starts); fail saying ``what`` never happened."""
    from jobs.producer import produce

    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, what
        produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
                demo_data.events(events, entities, seed=seed, prefix="probe"), encode=demo_data.encode)
        time.sleep(1)

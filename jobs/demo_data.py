"""Synthetic transactions, entity features and a demo model trained on them (nothing downloaded)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

N_FEATURES = 32
FEATURE_NAMES = [f"f{i}" for i in range(N_FEATURES)]
MODEL_INPUTS = ["amount"] + FEATURE_NAMES
DEMO_MODEL_NAME = "demo-fraud-gbm"
DEMO_MODEL_VERSION = "1"


def features_table(entities: int = 100_000, seed: int = 7) -> pa.Table:
    """``entities`` rows: entity_id 0..N-1 and 32 float32 features."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((entities, N_FEATURES), dtype=np.float32)
    columns = {"entity_id": pa.array(np.arange(entities, dtype=np.int64))}
    columns.update({name: pa.array(data[:, i]) for i, name in enumerate(FEATURE_NAMES)})
    return pa.table(columns)


def _truth(amount: np.ndarray, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    logit = 0.8 * features[:, 0] - 0.6 * features[:, 1] * features[:, 2] + 0.4 * np.log1p(amount) - 2.0
    return (logit + rng.normal(0, 0.5, len(amount)) > 0).astype(np.int64)


def amounts(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.round(rng.lognormal(3.0, 1.0, n), 2)


def cache_dir() -> Path:
    root = Path(os.environ.get("STREAMSCORE_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamscore"))
    root.mkdir(parents=True, exist_ok=True)
    return root


# The demo's model versions: (boosting iterations, tree depth). Version 2 is the one the demo
# promotes mid-run through the registry.
DEMO_MODEL_PARAMS = {"1": (100, 4), "2": (150, 5)}


def demo_model(entities: int = 100_000, seed: int = 7, version: str = DEMO_MODEL_VERSION) -> Path:
    """The demo model (gradient boosting, exported to ONNX), trained at first use and cached."""
    path = cache_dir() / f"{DEMO_MODEL_NAME}-v{version}-{entities}-{seed}.onnx"
    if path.exists():
        return path
    from sklearn.ensemble import HistGradientBoostingClassifier

    from model_formats.export import export_onnx

    rng = np.random.default_rng(seed + 1)
    table = features_table(entities, seed)
    rows = rng.integers(0, entities, 30_000)
    feats = np.column_stack([table.column(n).to_numpy()[rows] for n in FEATURE_NAMES])
    amount = amounts(len(rows), rng)
    x = np.column_stack([amount.astype(np.float32), feats])
    iterations, depth = DEMO_MODEL_PARAMS[version]
    model = HistGradientBoostingClassifier(max_iter=iterations, max_depth=depth, random_state=0).fit(
        x, _truth(amount, feats, rng))
    tmp = path.with_suffix(".tmp.onnx")
    export_onnx(model, MODEL_INPUTS, tmp, name=DEMO_MODEL_NAME, version=version)
    tmp.replace(path)   # atomic: a half-written model is never cached
    return path


def events(n: int, entities: int = 100_000, seed: int = 11, prefix: str = "evt") -> list[dict]:
    """``n`` well-formed transaction events (``ts`` is filled in when produced)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, entities, n)
    amount = amounts(n, rng)
    return [{"id": f"{prefix}-{i}", "entity_id": int(e), "amount": float(a), "ts": 0}
            for i, (e, a) in enumerate(zip(ids, amount))]


# Malformed events of five kinds (and the reason each must be dead-lettered with).
BAD_KINDS = {
    "invalid_json": (b'{"id": "bad-json", "entity_id": 1, ', "invalid_json"),
    "missing_field": (b'{"id": "bad-missing", "amount": 3.5, "ts": 1}', "missing_field"),
    "wrong_type": (b'{"id": "bad-type", "entity_id": "forty-two", "amount": 3.5, "ts": 1}', "wrong_type"),
    "invalid_utf8": (b'{"id": "bad-\xff\xfe", "entity_id": 1, "amount": 3.5, "ts": 1}', "invalid_utf8"),
    "unknown_entity": (None, "unknown_entity"),   # well-formed, entity not in the store
}


def bad_event(kind: str, i: int, entities: int, extra: dict | None = None) -> bytes:
    """A bad event of ``kind`` (``extra``: more fields for the well-formed unknown-entity one)."""
    raw, _ = BAD_KINDS[kind]
    if raw is None:
        return orjson.dumps({"id": f"bad-unknown-{i}", "entity_id": entities + 1000 + i, "amount": 1.0,
                             "ts": int(time.time() * 1000), **(extra or {})})
    return raw


CHANNELS = ("pos", "app", "web")     # the demo's text field `channel` (demo --experiment routes on it)


def with_channel(events: list[dict], seed: int = 13, channels: tuple[str, ...] = CHANNELS) -> list[dict]:
    """The events with a text field ``channel``, one of ``channels`` each, drawn evenly."""
    picks = np.random.default_rng(seed).integers(0, len(channels), len(events))
    return [{**event, "channel": channels[i]} for event, i in zip(events, picks)]


def with_bad_events(events: list[dict], entities: int, every: int = 100, start: int = 50,
                    salt: int = 0, extra: dict | None = None) -> tuple[list, dict[int, str]]:
    """Every ``every``-th record (from ``start``) replaced by a malformed one, each kind in turn:
    (records, position → the dead-letter reason it must get; ``extra``: fields the events have
    beyond the demo's four, given to the well-formed unknown-entity ones too)."""
    kinds = list(BAD_KINDS)
    records: list = list(events)
    reasons = {}
    for j, i in enumerate(range(start, len(records), every)):
        kind = kinds[j % len(kinds)]
        records[i] = bad_event(kind, salt + j, entities, extra)
        reasons[i] = BAD_KINDS[kind][1]
    return records, reasons


def encode(event: dict) -> bytes:
    """Stamp the creation time and encode one event."""
    event["ts"] = int(time.time() * 1000)
    return orjson.dumps(event)

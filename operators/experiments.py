"""Live experiments on micro-batches, independent of any engine: which entities a canary serves,
which models a routed event goes to, and the champion/challenger comparison computed in the stream.

The Flink operators, the Beam transforms and the registry's reports use these, so a canary serves
the same entities on every engine, host and restart, and a comparison means the same everywhere.

>>> import numpy as np
>>> served = canary_mask(np.arange(100_000), salt="fraud/production", share=0.10)
>>> round(float(served.mean()), 2)
0.1
>>> bool((served == canary_mask(np.arange(100_000), salt="fraud/production", share=0.10)).all())
True
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa

# ---------------------------------------------------------------------------------------------
# canary: a stable share of entities


def entity_buckets(keys: Sequence[Any] | np.ndarray | pa.Array, salt: str) -> np.ndarray:
    """A number in [0, 1) per entity key, the same for a key and salt in every process, host and
    engine: the first 8 bytes of BLAKE2b(salt, key) as a fraction. Keys are hashed by their text
    (``42`` and ``"42"`` are the same entity, as they are in the feature store)."""
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        keys = keys.to_pylist()
    prefix = salt.encode() + b"\x00"
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(prefix + _key_text(key), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0 ** 64
    return out


def _key_text(key: Any) -> bytes:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    if isinstance(key, (float, np.floating)) and float(key).is_integer():
        key = int(key)
    if isinstance(key, np.integer):
        key = int(key)
    return str(key).encode()


def canary_mask(keys: Sequence[Any] | np.ndarray | pa.Array, salt: str, share: float) -> np.ndarray:
    """True for the entities the canary serves: a stable ``share`` (0..1) of all entities, chosen
    by :func:`entity_buckets` with ``salt`` (the deployment, e.g. ``fraud/production``, so two
    deployments' canaries are independent). Raising the share keeps every entity already served."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"canary share must be between 0 and 1, not {share}")
    if share == 0.0:
        return np.zeros(len(keys), dtype=bool)
    return entity_buckets(keys, salt) < share


# ---------------------------------------------------------------------------------------------
# routes: rules on event fields, first match wins

ConditionOp = Literal["equals", "in", "range", "regex"]
Combine = Literal["mean", "max", "vote"]


@dataclass(frozen=True)
class Condition:
    """``field`` ``op`` value: ``equals`` (one value), ``in`` (a list), ``range`` (``[low, high)``,
    either end may be None), ``regex`` (Python syntax, searched anywhere in the text)."""
    field: str
    op: ConditionOp
    value: Any

    def __post_init__(self) -> None:
        if self.op == "in" and not isinstance(self.value, (list, tuple, set, frozenset)):
            raise ValueError(f"route condition {self.field} in: needs a list, got {self.value!r}")
        if self.op == "range":
            if not isinstance(self.value, (list, tuple)) or len(self.value) != 2:
                raise ValueError(f"route condition {self.field} range: needs [low, high], got {self.value!r}")
        elif self.op == "regex":
            re.compile(self.value)
        elif self.op not in ("equals", "in"):
            raise ValueError(f"route condition op {self.op!r}: one of equals, in, range, regex")

    def matches(self, events: pa.RecordBatch) -> np.ndarray:
        """Which rows satisfy the condition (a null or missing field satisfies none)."""
        if self.field not in events.schema.names:
            raise KeyError(f"route condition on {self.field!r}: the events have no such field "
                           f"(fields: {', '.join(events.schema.names)})")
        values = events.column(self.field).to_pylist()
        if self.op == "equals":
            return np.fromiter((v is not None and v == self.value for v in values), bool, len(values))
        if self.op == "in":
            allowed = set(self.value)
            return np.fromiter((v is not None and v in allowed for v in values), bool, len(values))
        if self.op == "range":
            low, high = self.value
            arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            ok = ~np.isnan(arr)
            if low is not None:
                ok &= arr >= low
            if high is not None:
                ok &= arr < high
            return ok
        pattern = re.compile(self.value)
        return np.fromiter((v is not None and pattern.search(str(v)) is not None for v in values), bool, len(values))


@dataclass(frozen=True)
class Route:
    """A rule (all ``when`` conditions hold; none: matches every event) and the models it sends the
    event to; with several models their scores are combined by ``combine``."""
    name: str
    models: tuple[str, ...]
    when: tuple[Condition, ...] = ()
    combine: Combine = "mean"

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError(f"route {self.name!r} names no model")
        if self.combine not in ("mean", "max", "vote"):
            raise ValueError(f"route {self.name!r}: combine must be mean, max or vote, not {self.combine!r}")


NO_ROUTE = -1


def assign_routes(events: pa.RecordBatch, routes: Sequence[Route]) -> np.ndarray:
    """The index of the first route each event matches, or ``NO_ROUTE`` (-1): such events become
    dead letters ``no_route``. Put a route with no conditions last for a default."""
    chosen = np.full(events.num_rows, NO_ROUTE, dtype=np.int64)
    open_rows = np.ones(events.num_rows, dtype=bool)
    for index, route in enumerate(routes):
        if not open_rows.any():
            break
        hit = open_rows.copy()
        for condition in route.when:
            hit &= condition.matches(events)
        chosen[hit] = index
        open_rows &= ~hit
    return chosen


def combine_scores(scores: np.ndarray, combine: Combine, threshold: float = 0.5) -> np.ndarray:
    """One score per row from a (rows × models) matrix: the ``mean``, the ``max``, or ``vote``
    (the share of models whose score is at or above ``threshold``)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"combine needs a rows × models matrix, got shape {scores.shape}")
    if combine == "mean":
        return scores.mean(axis=1)
    if combine == "max":
        return scores.max(axis=1)
    if combine == "vote":
        return (scores >= threshold).mean(axis=1)
    raise ValueError(f"combine must be mean, max or vote, not {combine!r}")


# ---------------------------------------------------------------------------------------------
# the champion/challenger comparison of one window

DEFAULT_SCORE_BINS = tuple(np.linspace(0.0, 1.0, 21).tolist())     # 20 bins of 0.05 over [0, 1]
PSI_EPSILON = 1e-4          # share given to an empty bin so PSI stays finite


def population_stability_index(expected_counts: Sequence[int], actual_counts: Sequence[int]) -> float:
    """PSI = Σ (a − e) · ln(a / e) over bins of two histograms on the same bins (shares; empty
    bins count as ``PSI_EPSILON``). 0: same distribution; above 0.1 a shift; above 0.25 a large one."""
    e = np.asarray(expected_counts, dtype=np.float64)
    a = np.asarray(actual_counts, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError("PSI needs two histograms on the same bins")
    if e.sum() == 0 or a.sum() == 0:
        return math.nan
    e = np.maximum(e / e.sum(), PSI_EPSILON)
    a = np.maximum(a / a.sum(), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class WindowComparison:
    """What one champion/challenger pair did on the same events during one window; add batches
    with :meth:`add`, read the figures with :meth:`summary`."""
    champion: str                       # name@version
    challenger: str
    window_start_ms: int
    bins: tuple[float, ...] = DEFAULT_SCORE_BINS
    compared: int = 0
    agreed: int = 0
    flips: dict[tuple[str, str], int] = field(default_factory=dict)   # (champion label, challenger label)
    champion_hist: np.ndarray = field(default=None)                   # type: ignore[assignment]
    challenger_hist: np.ndarray = field(default=None)                 # type: ignore[assignment]
    _diffs: list[np.ndarray] = field(default_factory=list)
    champion_ms: list[float] = field(default_factory=list)            # per batch
    challenger_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.bins) - 1
        if self.champion_hist is None:
            self.champion_hist = np.zeros(n, dtype=np.int64)
        if self.challenger_hist is None:
            self.challenger_hist = np.zeros(n, dtype=np.int64)

    def add(self, champion_scores: np.ndarray, champion_labels: Sequence[Any],
            challenger_scores: np.ndarray, challenger_labels: Sequence[Any],
            champion_ms: float | None = None, challenger_ms: float | None = None) -> None:
        """One batch scored by both models, row-aligned (the same events in the same order)."""
        a = np.asarray(champion_scores, dtype=np.float64)
        b = np.asarray(challenger_scores, dtype=np.float64)
        if not (len(a) == len(b) == len(champion_labels) == len(challenger_labels)):
            raise ValueError("champion and challenger results must be row-aligned")
        self.compared += len(a)
        la = [str(x) for x in champion_labels]
        lb = [str(x) for x in challenger_labels]
        for x, y in zip(la, lb):
            self.flips[(x, y)] = self.flips.get((x, y), 0) + 1
        self.agreed += sum(x == y for x, y in zip(la, lb))
        self._diffs.append(np.abs(a - b))
        self.champion_hist += _histogram(a, self.bins)
        self.challenger_hist += _histogram(b, self.bins)
        if champion_ms is not None:
            self.champion_ms.append(float(champion_ms))
        if challenger_ms is not None:
            self.challenger_ms.append(float(challenger_ms))

    def summary(self) -> dict[str, Any]:
        """The window's figures as a JSON-able record (the comparison topic's value)."""
        diffs = np.concatenate(self._diffs) if self._diffs else np.empty(0)
        finite = diffs[np.isfinite(diffs)]
        return {
            "champion": self.champion, "challenger": self.challenger,
            "window_start_ms": self.window_start_ms, "compared": self.compared,
            "agreement": self.agreed / self.compared if self.compared else None,
            "flips": [{"champion": k[0], "challenger": k[1], "count": v} for k, v in sorted(self.flips.items())],
            "score_diff_mean": float(finite.mean()) if len(finite) else None,
            "score_diff_p50": float(np.percentile(finite, 50)) if len(finite) else None,
            "score_diff_p99": float(np.percentile(finite, 99)) if len(finite) else None,
            "bins": list(self.bins),
            "champion_hist": self.champion_hist.tolist(),
            "challenger_hist": self.challenger_hist.tolist(),
            "psi": population_stability_index(self.champion_hist, self.challenger_hist) if self.compared else None,
            "champion_batch_ms_p50": _p(self.champion_ms, 50), "challenger_batch_ms_p50": _p(self.challenger_ms, 50),
            "champion_batch_ms_p99": _p(self.champion_ms, 99), "challenger_batch_ms_p99": _p(self.challenger_ms, 99),
        }


def _histogram(scores: np.ndarray, bins: Sequence[float]) -> np.ndarray:
    """Counts per bin; scores outside the bins go to the first or last bin, NaN to none."""
    s = scores[np.isfinite(scores)]
    s = np.clip(s, bins[0], bins[-1])
    return np.histogram(s, bins=np.asarray(bins))[0].astype(np.int64)


def _p(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None

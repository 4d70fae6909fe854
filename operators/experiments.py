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
import logging
import math
import re
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa

from operators.batch import MicroBatch

log = logging.getLogger(__name__)

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
# scoring a micro-batch by route

COMBINED_LABEL_THRESHOLD = 0.5     # a combined score at or above it is label 1, else 0 (and vote's threshold)


class CombinedModel:
    """Several models behind the one ``Model`` interface, their scores combined per row
    (:func:`combine_scores`): ``name`` and ``version`` are the models' joined by ``+``; a row any
    of them refuses is refused (the first refusal's reason); ``label`` is 1 when the combined
    score is at or above ``COMBINED_LABEL_THRESHOLD``, else 0."""
    format = "combined"

    def __init__(self, models: Sequence[Any], combine: Combine) -> None:
        if len(models) < 2:
            raise ValueError("a combined model needs at least two models")
        if combine not in ("mean", "max", "vote"):
            raise ValueError(f"combine must be mean, max or vote, not {combine!r}")
        self.models = list(models)
        self.combine: Combine = combine

    # read afresh: a model that follows a registry may have taken a new version since
    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.models)

    @property
    def version(self) -> str:
        return "+".join(str(m.version) for m in self.models)

    @property
    def schema(self):
        from model_formats.base import FieldSpec, ModelSchema

        inputs = {f.name: f for m in self.models for f in m.schema.inputs}
        return ModelSchema(tuple(inputs.values()), (FieldSpec("score", "double"), FieldSpec("label", "integer")))

    def validate(self, batch: Any):
        """Every model's validation; ``valid`` keeps all columns of the rows every model accepts
        (each model picks its own inputs again in :meth:`predict`)."""
        from model_formats.base import ValidationResult, as_record_batch

        batch = as_record_batch(batch)
        reasons: dict[int, str] = {}
        for model in self.models:
            result = model.validate(batch)
            for row, reason in zip(result.rejected_index.tolist(), result.reasons):
                reasons.setdefault(int(row), reason)
        rejected = np.array(sorted(reasons), dtype=np.int64)
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[rejected] = False
        return ValidationResult(batch.filter(pa.array(keep)), np.flatnonzero(keep), rejected,
                                [reasons[int(r)] for r in rejected])

    def predict(self, batch: Any) -> pa.RecordBatch:
        from model_formats.base import LABEL, SCORE, as_record_batch

        batch = as_record_batch(batch)
        columns = []
        for model in self.models:
            result = model.validate(batch)
            if len(result.rejected_index):
                raise ValueError(f"model {model.name}@{model.version} refused rows its validation accepted before")
            columns.append(np.asarray(model.predict(result.valid).column(SCORE).to_numpy(zero_copy_only=False),
                                      dtype=np.float64))
        scores = combine_scores(np.column_stack(columns), self.combine, COMBINED_LABEL_THRESHOLD) if columns \
            else np.empty(0)
        labels = (scores >= COMBINED_LABEL_THRESHOLD).astype(np.int64)
        return pa.RecordBatch.from_arrays([pa.array(scores, pa.float64()), pa.array(labels, pa.int64())],
                                          names=[SCORE, LABEL])

    def close(self) -> None:
        pass        # the models belong to the RouteScorer that shares them among routes


class RouteScorer:
    """Scores each micro-batch by route, engine-independent (the Flink operator and tests call it
    alike): every event goes to the first route it matches (:func:`assign_routes`) and only to that
    route's model(s) (several: scores combined by the route's ``combine``, see :class:`CombinedModel`);
    an event no route matches becomes a dead letter ``no_route`` whose detail names the values of
    the fields the routes look at. Predictions come back in the input's order, served
    (``prediction_id`` = the input's coordinates, ``role`` champion), their ``model`` naming the
    route's model (``a+b`` for a combination). Each distinct model is loaded once, when the scorer
    is made (a route's model that cannot be loaded fails it: a configuration error); a model with
    a ``refresh()`` (one that follows a registry) is asked for its new version before each batch.

    ``loader(ref)``: how a route's model reference is loaded (default ``load_model(ref,
    **load_options)``).

    ``champion`` and ``score_champion``: the routes whose one model is ``champion`` (the job's
    champion: ``model.path``, or a followed deployment's name) are not loaded here; their events are
    scored together, in one call of ``score_champion(MicroBatch) -> ScoredBatch`` (the operator's
    reloading or followed champion with its shadows and canary, :class:`ExperimentScorer`). What
    that call's result has in ``experiment`` (shadow predictions, closed comparison windows) comes
    out on the merged result: challengers are compared with the champion on the events it serves."""

    def __init__(self, routes: Sequence[Route], schema: Any, *, loader: Any = None, champion: str | None = None,
                 score_champion: Any = None, **load_options) -> None:
        if not routes:
            raise ValueError("a route scorer needs at least one route")
        names = [r.name for r in routes]
        if len(set(names)) != len(names):
            raise ValueError(f"route names must be distinct: {names}")
        self.routes = tuple(routes)
        self.schema = schema
        self.score_champion = score_champion if champion is not None else None
        self._champion_routes = {i for i, r in enumerate(self.routes)
                                 if self.score_champion is not None and r.models == (champion,)}
        if loader is None:
            from model_formats import load_model

            def loader(ref: str) -> Any:
                return load_model(ref, **load_options)
        self.models: dict[str, Any] = {}
        try:
            for ref in dict.fromkeys(m for i, r in enumerate(self.routes) for m in r.models
                                     if i not in self._champion_routes):
                self.models[ref] = loader(ref)
        except BaseException:
            self.close()
            raise
        self._served = [None if i in self._champion_routes else self.models[r.models[0]] if len(r.models) == 1 else
                        CombinedModel([self.models[m] for m in r.models], r.combine)
                        for i, r in enumerate(self.routes)]
        self._fields = list(dict.fromkeys(c.field for r in self.routes for c in r.when))
        self.route_events: dict[str, int] = {name: 0 for name in names}     # events sent to each route
        self.no_route = 0                                                    # events no route matched

    def score(self, batch: MicroBatch) -> Any:
        """The served result of ``batch`` (a ``steps.ScoredBatch``): every route's predictions in the
        input's order, the route's and the ``no_route`` dead letters after the batch's own."""
        from connectors.dead_letter import Reason
        from operators import steps

        for model in self.models.values():      # routed models that follow a registry take new versions
            refresh = getattr(model, "refresh", None)
            if refresh is not None:
                refresh()
        if batch.events.num_rows == 0:
            if self._served[0] is None:
                return self.score_champion(batch)
            return steps.score_batch(batch, self._served[0], self.schema)
        chosen = assign_routes(batch.events, self.routes)
        unrouted = chosen == NO_ROUTE
        if unrouted.any():
            self.no_route += int(unrouted.sum())
            details = self._no_route_details(batch.events, np.flatnonzero(unrouted))
            batch = batch.split_off(unrouted, Reason.NO_ROUTE, details)
            chosen = chosen[~unrouted]
        parts = []
        for index, (route, model) in enumerate(zip(self.routes, self._served)):
            mask = chosen == index
            if not mask.any():
                continue
            self.route_events[route.name] += int(mask.sum())
            if model is not None:
                parts.append(steps.score_batch(self._part(batch, mask), model, self.schema))
        experiment = None
        if self._champion_routes:
            mask = np.isin(chosen, sorted(self._champion_routes))
            if mask.any():
                champion_part = self.score_champion(self._part(batch, mask))
                experiment = champion_part.experiment
                parts.append(champion_part)
        merged = steps.merge_in_input_order(batch, parts)
        merged.experiment = experiment
        return merged

    @staticmethod
    def _part(batch: MicroBatch, mask: np.ndarray) -> MicroBatch:
        return MicroBatch(batch.topic, batch.partition, batch.events.filter(pa.array(mask)), [],
                          batch.polled_at_ms, batch.features)

    def _no_route_details(self, events: pa.RecordBatch, rows: np.ndarray) -> list[str]:
        present = [f for f in self._fields if f in events.schema.names]
        values = {f: events.column(f).take(pa.array(rows)).to_pylist() for f in present}
        return [f"no route matches and there is no default route: "
                + (", ".join(f"{f}={values[f][i]!r}" for f in present) or "no routed field")
                for i in range(len(rows))]

    def close(self) -> None:
        for model in self.models.values():
            try:
                model.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.exception("closing a routed model failed")
        self.models.clear()


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


def merge_windows(windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several windows of one pair taken together (counts and histograms add up;
    agreement and the mean difference are weighted by events compared)."""
    if not windows:
        raise ValueError("no comparison windows to report")
    compared = sum(w["compared"] for w in windows)
    agreed = sum((w["agreement"] or 0) * w["compared"] for w in windows)
    flips: dict[tuple[str, str], int] = {}
    for w in windows:
        for f in w["flips"]:
            key = (f["champion"], f["challenger"])
            flips[key] = flips.get(key, 0) + f["count"]
    first = windows[0]
    champion_hist = [sum(w["champion_hist"][i] for w in windows) for i in range(len(first["champion_hist"]))]
    challenger_hist = [sum(w["challenger_hist"][i] for w in windows) for i in range(len(first["challenger_hist"]))]
    diff_mean = sum((w["score_diff_mean"] or 0) * w["compared"] for w in windows) / compared if compared else None
    return {
        "champion": first["champion"], "challenger": first["challenger"], "windows": len(windows),
        "compared": compared, "agreement": agreed / compared if compared else None,
        "flips": [{"champion": k[0], "challenger": k[1], "count": v} for k, v in sorted(flips.items())],
        "score_diff_mean": diff_mean,
        "score_diff_p99_max": max((w["score_diff_p99"] or 0) for w in windows),
        "bins": first["bins"], "champion_hist": champion_hist, "challenger_hist": challenger_hist,
        "psi": population_stability_index(champion_hist, challenger_hist) if compared else None,
    }


def _histogram(scores: np.ndarray, bins: Sequence[float]) -> np.ndarray:
    """Counts per bin; scores outside the bins go to the first or last bin, NaN to none."""
    s = scores[np.isfinite(scores)]
    s = np.clip(s, bins[0], bins[-1])
    return np.histogram(s, bins=np.asarray(bins))[0].astype(np.int64)


def _p(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# ---------------------------------------------------------------------------------------------
# the comparison windows of a running scorer


class ComparisonWindows:
    """The open :class:`WindowComparison` of each (role, champion, challenger) pair of one scorer,
    on processing-time windows of ``window_ms`` (aligned to the epoch, so every scorer's windows
    start together). A window closes with the first batch after its end; :meth:`add` and
    :meth:`close_due` return the summaries of the windows that closed, each tagged with the
    challenger's ``role`` and the ``scorer`` (the subtask) that computed it."""

    def __init__(self, window_ms: int, scorer: int = 0) -> None:
        if window_ms <= 0:
            raise ValueError(f"comparison window must be positive, not {window_ms} ms")
        self.window_ms = int(window_ms)
        self.scorer = scorer
        self._open: dict[tuple[str, str, str], WindowComparison] = {}
        self.last: dict[tuple[str, str, str], dict[str, Any]] = {}   # the newest closed summary per pair

    def add(self, now_ms: float, role: str, champion: str, challenger: str, champion_rows: pa.RecordBatch,
            challenger_rows: pa.RecordBatch, champion_ms: float | None = None,
            challenger_ms: float | None = None) -> list[dict[str, Any]]:
        """Add one batch's predictions of both models (``PREDICTION_FIELDS``; matched by the input's
        coordinates, so rows either model refused are left out)."""
        closed = self.close_due(now_ms)
        start = int(now_ms // self.window_ms * self.window_ms)
        key = (role, champion, challenger)
        window = self._open.get(key)
        if window is None:
            window = self._open[key] = WindowComparison(champion, challenger, start)
        a, b = align_predictions(champion_rows, challenger_rows)
        if len(a):
            window.add(champion_rows.column("score").to_numpy(zero_copy_only=False)[a],
                       np.asarray(champion_rows.column("label").to_pylist(), dtype=object)[a],
                       challenger_rows.column("score").to_numpy(zero_copy_only=False)[b],
                       np.asarray(challenger_rows.column("label").to_pylist(), dtype=object)[b],
                       champion_ms, challenger_ms)
        return closed

    def close_due(self, now_ms: float) -> list[dict[str, Any]]:
        """Close and summarize every window that ended before ``now_ms`` (and compared something)."""
        out = []
        for key, window in list(self._open.items()):
            if now_ms >= window.window_start_ms + self.window_ms:
                del self._open[key]
                if window.compared:
                    summary = {**window.summary(), "role": key[0], "scorer": self.scorer,
                               "window_ms": self.window_ms}
                    self.last[key] = summary
                    out.append(summary)
        return out


def align_predictions(champion: pa.RecordBatch, challenger: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the same inputs in two models' predictions of one batch (a challenger's
    ``prediction_id`` is the champion's plus ``/<model>``): row-aligned already when both scored
    every event, matched by id when either refused some."""
    n, m = champion.num_rows, challenger.num_rows
    if n == 0 or m == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    ids_a = champion.column("prediction_id").to_pylist()
    ids_b = challenger.column("prediction_id").to_pylist()
    base_b = [_coordinates(i) for i in ids_b]
    if n == m and ids_a[0] == base_b[0] and ids_a[-1] == base_b[-1] and ids_a == base_b:
        idx = np.arange(n, dtype=np.int64)
        return idx, idx
    where = {pid: row for row, pid in enumerate(ids_a)}
    pairs = [(where[pid], row) for row, pid in enumerate(base_b) if pid in where]
    if not pairs:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    a, b = zip(*pairs)
    return np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)


def _coordinates(prediction_id: str) -> str:
    """``topic/partition/offset`` of a prediction id (a challenger's has ``/<model>`` after it)."""
    return "/".join(prediction_id.split("/", 3)[:3])     # Kafka topic names have no "/"


@dataclass(frozen=True)
class ComparisonPair:
    """One batch's predictions of the champion and one challenger (``PREDICTION_FIELDS`` rows), not
    yet in a window: what an engine that windows comparisons itself receives (see
    ``ExperimentScorer(emit_pairs=True)``)."""
    role: str                       # the challenger's: shadow or canary
    champion: str                   # name@version
    challenger: str
    champion_rows: pa.RecordBatch
    challenger_rows: pa.RecordBatch
    champion_ms: float | None = None
    challenger_ms: float | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.role, self.champion, self.challenger)

    def add_to(self, windows: ComparisonWindows, now_ms: float) -> list[dict[str, Any]]:
        """Into ``windows`` at ``now_ms``; the summaries of the windows that closed."""
        return windows.add(now_ms, self.role, self.champion, self.challenger, self.champion_rows,
                           self.challenger_rows, self.champion_ms, self.challenger_ms)


def summarize_pairs(pairs: Sequence[ComparisonPair], window_start_ms: float, window_ms: int,
                    scorer: int = 0) -> list[dict[str, Any]]:
    """The comparison summaries of one window from every batch's pairs in it (any order): the
    same :class:`ComparisonWindows` figures a scorer computes in the stream, one per
    (role, champion, challenger) that compared something."""
    windows = ComparisonWindows(window_ms, scorer)
    for pair in pairs:
        pair.add_to(windows, window_start_ms)
    return windows.close_due(math.inf)


# ---------------------------------------------------------------------------------------------
# scoring a micro-batch with the champion and its challengers


@dataclass
class _Challenger:
    offer: Any                            # model_formats.reloading.ChallengerOffer
    thread: Any                           # a one-thread executor: loads, then scores (shadows)
    loading: Any = None                   # the load's future
    model: Any = None
    error: str | None = None
    pending: Any = None                   # a shadow's scoring in flight
    failures: int = 0                     # a shadow's batches in a row that raised or missed the budget
    resume_at: float = 0.0                # a failing shadow sits out batches until then (monotonic s)

    def failed(self) -> None:
        """One more batch in a row failed: from the third on, sit out 1 s, 2 s, 4 s … (at most
        ``BACKOFF_MAX_S``) before the next try, so a shadow that always fails costs nothing."""
        self.failures += 1
        if self.failures >= BACKOFF_AFTER:
            self.resume_at = time.monotonic() + min(BACKOFF_MAX_S, 2.0 ** (self.failures - BACKOFF_AFTER))

    def ready(self) -> bool:
        """Loaded (waiting for nothing); a failed load sets ``error``."""
        if self.model is None and self.error is None and self.loading is not None and self.loading.done():
            try:
                self.model = self.loading.result()
            except Exception as exc:  # noqa: BLE001 - whatever a bad file raises: the challenger is skipped
                self.error = f"{type(exc).__name__}: {exc}"[:500]
                log.error("%s %s is not scored, it failed to load: %s", self.offer.role,
                          self.offer.candidate.describe(), self.error)
        return self.model is not None


SKIP_REASONS = ("load", "error", "budget", "busy", "backoff")
BACKOFF_AFTER = 3           # failed batches in a row before a shadow sits batches out
BACKOFF_MAX_S = 60.0


class ExperimentScorer:
    """Scores each micro-batch with the champion and, from a ``ChallengerPlan``, its shadows and
    canary; engine-independent (the Flink operator and tests call it alike).

    * Canary: events of the entities :func:`canary_mask` picks (``plan.salt``, the canary's
      share) are served by the canary (main output, role ``canary``, prediction id = the input's
      coordinates); the rest by the champion. The champion also scores the canary's events, for
      the comparison and as the fallback: if the canary raises on a batch, the champion's
      predictions are served for it (counted in ``canary_fallbacks``). Until the canary has
      loaded (or if it cannot be) the champion serves every event.
    * Shadows: each loads and scores on a thread of its own, on the same enriched events, while
      the champion scores; a shadow that failed to load, raises, is still busy with an earlier
      batch or is not done within ``shadow_budget_ms`` of the batch's start skips the batch
      (``skipped[reason]``), and its predictions never reach the served output. After three
      failed batches in a row (raised, or over the budget) a shadow sits out batches for a
      growing while (``backoff``), so one that always fails costs the champion nothing.
    * Comparison: each challenger against the champion per window (:class:`ComparisonWindows`);
      closed windows come out on the batch's ``experiment.comparisons``. The windows' clock is
      ``score``'s ``now_ms`` (default: the wall clock, processing time). With ``emit_pairs`` the
      scorer keeps no windows: each batch's aligned champion/challenger predictions come out on
      ``experiment.pairs`` (:class:`ComparisonPair`) for the engine to window itself (Beam's
      bounded runs group them by event-time window, then :func:`summarize_pairs`).

    With an empty plan a batch is scored exactly as a one-model job scores it."""

    def __init__(self, schema: Any, *, shadow_budget_ms: float | None = 200.0, window_ms: int = 10_000,
                 scorer: int = 0, loader: Any = None, emit_pairs: bool = False, **load_options) -> None:
        """``loader(candidate)``: how a challenger's model is loaded (default ``load_model`` with
        ``load_options`` and the candidate's name and version). ``shadow_budget_ms`` None: every
        batch waits for its shadows (bounded replays, where nothing is live and every shadow
        prediction is wanted)."""
        self.schema = schema
        self.shadow_budget_ms = None if shadow_budget_ms is None else float(shadow_budget_ms)
        self.windows = ComparisonWindows(window_ms, scorer)
        self.emit_pairs = emit_pairs
        self._loader = loader or (lambda c: _load(c, load_options))
        self._plan: Any = None
        self._challengers: dict[tuple, _Challenger] = {}
        self.skipped: dict[str, int] = {reason: 0 for reason in SKIP_REASONS}
        self.shadow_batches = 0                 # batches a shadow scored in time
        self.canary_events = 0                  # events the canary served
        self.canary_fallbacks = 0               # batches the canary raised on (the champion served them)

    @property
    def active(self) -> bool:
        return bool(self._challengers)

    @property
    def shadow_skipped(self) -> int:
        return sum(self.skipped.values())

    def set_plan(self, plan: Any) -> None:
        """Run ``plan``'s challengers from now on (unchanged ones keep their loaded model; new
        ones start loading on their own thread; removed ones are closed)."""
        if plan is self._plan:
            return
        from concurrent.futures import ThreadPoolExecutor

        self._plan = plan
        wanted = {offer.key: offer for offer in (plan.challengers if plan else ())}
        for key in [k for k in self._challengers if k not in wanted]:
            self._retire(self._challengers.pop(key))
        for key, offer in wanted.items():
            current = self._challengers.get(key)
            if current is not None:
                current.offer = offer           # e.g. a new canary share
                continue
            thread = ThreadPoolExecutor(1, thread_name_prefix=f"{offer.role}-model")
            challenger = self._challengers[key] = _Challenger(offer, thread)
            if offer.error or offer.candidate is None:
                challenger.error = offer.error or "no model"
            else:
                challenger.loading = thread.submit(self._loader, offer.candidate)

    def wait_loaded(self, timeout_s: float | None = None) -> None:
        """Wait until every challenger has loaded or failed to (an engine that loads its models up
        front, like Beam's RunInference, so that no batch skips a shadow that is still loading)."""
        from concurrent.futures import wait

        wait([c.loading for c in self._challengers.values() if c.loading is not None], timeout=timeout_s)
        for challenger in self._challengers.values():
            challenger.ready()

    def _retire(self, challenger: _Challenger) -> None:
        def close() -> None:
            if challenger.loading is not None:
                try:
                    challenger.loading.result().close()
                except Exception:  # noqa: BLE001 - it never loaded
                    pass
        challenger.thread.submit(close)
        challenger.thread.shutdown(wait=False)

    def close(self) -> None:
        for challenger in self._challengers.values():
            self._retire(challenger)
        self._challengers.clear()

    def score(self, batch: MicroBatch, champion: Any, now_ms: float | None = None) -> Any:
        """The served result of ``batch`` (a ``steps.ScoredBatch``), with ``experiment`` set when the
        plan has challengers. ``now_ms``: the comparison windows' clock for this batch (default:
        the wall clock; an event-time window start for a replay computed outside an engine)."""
        from operators import steps

        if not self._challengers or batch.events.num_rows == 0:
            return steps.score_batch(batch, champion, self.schema)
        clock = (lambda: now_ms) if now_ms is not None else steps.now_ms
        started = steps.now_ms()
        shadows = [c for c in self._challengers.values() if c.offer.role == steps.SHADOW]
        canary = next((c for c in self._challengers.values() if c.offer.role == steps.CANARY and c.offer.share > 0),
                      None)
        whole = MicroBatch(batch.topic, batch.partition, batch.events, [], batch.polled_at_ms, batch.features)
        in_flight = []
        for shadow in shadows:
            if not shadow.ready():
                self.skipped["load"] += 1          # failed to load, or still loading
                continue
            if shadow.pending is not None and not shadow.pending.done():
                self.skipped["busy"] += 1
                continue
            if shadow.resume_at and time.monotonic() < shadow.resume_at:
                self.skipped["backoff"] += 1
                continue
            shadow.pending = shadow.thread.submit(_timed, steps.score_batch_or_raise, whole, shadow.model,
                                                  self.schema, steps.SHADOW)
            in_flight.append(shadow)

        champion_ref = f"{champion.name}@{champion.version}"
        comparisons: list[dict[str, Any]] = []
        output = steps.ExperimentOutput()

        def compare(role: str, challenger: str, champion_rows, challenger_rows, champion_ms, challenger_ms):
            pair = ComparisonPair(role, champion_ref, challenger, champion_rows, challenger_rows, champion_ms,
                                  challenger_ms)
            if self.emit_pairs:
                output.pairs.append(pair)
            else:
                comparisons.extend(pair.add_to(self.windows, clock()))

        if canary is not None and canary.ready():
            mask = canary_mask(batch.events.column(self.schema.key_field), self._plan.salt, canary.offer.share)
        else:
            mask = None
        if mask is not None and mask.any():
            mine, theirs = steps.split_for_canary(batch, mask)
            t0 = steps.now_ms()
            champion_part = steps.score_batch(mine, champion, self.schema)
            champion_on_canary = steps.score_batch(theirs, champion, self.schema)
            champion_ms = steps.now_ms() - t0
            try:
                canary_part, canary_ms = _timed(steps.score_batch_or_raise, theirs, canary.model, self.schema,
                                                steps.CANARY, True)
            except Exception as exc:  # noqa: BLE001 - a failing canary must not lose events: the champion serves
                self.canary_fallbacks += 1
                log.error("canary %s raised on a batch of %d events, the champion serves them: %s: %s",
                          canary.offer.candidate.describe(), theirs.events.num_rows, type(exc).__name__,
                          str(exc)[:300])
                served = steps.merge_served(batch, [champion_part, champion_on_canary])
            else:
                self.canary_events += canary_part.predictions.num_rows
                served = steps.merge_served(batch, [champion_part, canary_part])
                compare(steps.CANARY, f"{canary.model.name}@{canary.model.version}",
                        champion_on_canary.predictions, canary_part.predictions, champion_ms, canary_ms)
            champion_rows = steps.concat_predictions([champion_part.predictions, champion_on_canary.predictions])
        else:
            t0 = steps.now_ms()
            served = steps.score_batch(batch, champion, self.schema)
            champion_ms = steps.now_ms() - t0
            champion_rows = served.predictions

        deadline = None if self.shadow_budget_ms is None else started + self.shadow_budget_ms
        for shadow in in_flight:
            remaining_s = None if deadline is None else max(0.0, deadline - steps.now_ms()) / 1000.0
            try:
                scored, shadow_ms = shadow.pending.result(timeout=remaining_s)
            except FutureTimeout:
                self.skipped["budget"] += 1     # it finishes on its thread; its result is dropped
                shadow.failed()
                continue
            except Exception as exc:  # noqa: BLE001 - a failing shadow skips the batch, never the champion's
                self.skipped["error"] += 1
                shadow.failed()
                _log_shadow_error(shadow, exc)
                continue
            shadow.failures, shadow.resume_at = 0, 0.0
            self.shadow_batches += 1
            output.shadow_predictions.append(scored.predictions)
            compare(steps.SHADOW, f"{shadow.model.name}@{shadow.model.version}", champion_rows,
                    scored.predictions, champion_ms, shadow_ms)
        if not self.emit_pairs:
            comparisons += self.windows.close_due(clock())
        output.comparisons = comparisons
        served.experiment = output
        return served


def _load(candidate: Any, load_options: dict) -> Any:
    from model_formats import load_model

    identity = {k: v for k, v in (("name", candidate.name), ("version", candidate.version)) if v}
    return load_model(candidate.path, **{**load_options, **identity})


def _timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, (time.perf_counter() - started) * 1000.0


_LOGGED_ERRORS: set[tuple[str, str]] = set()


def _log_shadow_error(shadow: _Challenger, exc: BaseException) -> None:
    """A shadow's failure, logged once per (model, error type): a shadow raising on every batch
    must not flood the log."""
    key = (shadow.offer.candidate.describe(), type(exc).__name__)
    if key not in _LOGGED_ERRORS:
        _LOGGED_ERRORS.add(key)
        log.error("shadow %s raised; it skips such batches (counted in shadow_skipped): %s: %s", key[0],
                  key[1], str(exc)[:300])

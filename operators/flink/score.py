"""Scoring operator: one model call per micro-batch (plus the challengers', when there are any)."""
from __future__ import annotations

from typing import Any

from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.datastream.functions import MapFunction, RuntimeContext

from connectors.events import EventSchema
from model_formats.reloading import ChallengerPlan, ReloadingModel
from operators import steps
from operators.batch import MicroBatch
from operators.flink.metrics import metric_group

PPM = 1_000_000


class ScoreMicroBatch(MapFunction):
    """Validates each micro-batch against the model's schema and scores the valid rows. A new
    model version from the model's source (a replaced file, or a registry promotion) takes over
    between micro-batches once it loads and checks (see ``model_formats.reloading``).

    ``model``: the model file's path, or a picklable spec whose ``open()`` gives a
    ``ModelSource`` in the worker (``registry.follow.FollowSpec``).

    ``experiments``: score with challengers too (``operators.experiments.ExperimentScorer``): the
    file shadows/canary of ``challengers``, or the followed deployment's (its source's
    ``challengers()``); closed comparison windows go to the registry when following one. Without,
    or with no challenger configured, a batch is scored exactly as before.

    ``routes``: a ``jobs.config.RoutePlan``: each event is scored by its route's model(s) instead
    (``operators.experiments.RouteScorer``, every routed model loaded once here); metrics
    ``route_<name>_events`` and ``no_route`` (events). The route(s) serving the champion
    (``RoutePlan.champion``) are scored by ``model`` as above, reloads, followed promotions,
    shadows and canary included; without such a route ``model`` is not loaded."""

    def __init__(self, model: str | Any, schema: EventSchema, intra_op_threads: int = 1,
                 reload_interval_s: float = 5.0, load_options: dict | None = None, *,
                 experiments: bool = False, challengers: ChallengerPlan | None = None,
                 shadow_budget_ms: float = 200.0, comparison_window_ms: int = 10_000,
                 routes: Any = None) -> None:
        self.model_path = model
        self.routes = routes
        self.load_options = dict(load_options or {})
        self.schema = schema
        self.intra_op_threads = intra_op_threads
        self.reload_interval_s = reload_interval_s
        self.experiments = experiments
        self.challengers = challengers
        self.shadow_budget_ms = shadow_budget_ms
        self.comparison_window_ms = comparison_window_ms

    def open(self, ctx: RuntimeContext) -> None:
        metrics = metric_group(ctx)
        self._score_ms = metrics.distribution("scoring_ms")
        self._rejected = metrics.counter("model_input_rejected")
        self._failed = metrics.counter("scoring_errors")
        self._router = None
        self._model = None
        self._experiment = None
        if self.routes is None or self.routes.champion is not None:
            self._open_champion(ctx, metrics)
        if self.routes is not None:
            champion = self._score_champion if self._model is not None else None
            self._router = self.routes.scorer(self.schema, score_champion=champion,
                                              intra_op_num_threads=self.intra_op_threads, **self.load_options)
            self._route_counters = {route.name: metrics.counter(f"route_{route.name}_events")
                                    for route in self._router.routes}
            self._no_route = metrics.counter("no_route")
            self._route_counts: dict[str, int] = dict(self._router.route_events)
            self._no_route_count = 0

    def _open_champion(self, ctx: RuntimeContext, metrics) -> None:
        """The champion: its model source (file or followed deployment) and its challengers."""
        source = self.model_path if isinstance(self.model_path, str) else self.model_path.open()
        self._model = ReloadingModel(source, self.reload_interval_s,
                                     intra_op_num_threads=self.intra_op_threads, **self.load_options)
        self._reloads = metrics.counter("model_reloads")
        self._refused = metrics.counter("model_reloads_refused")
        self._seen = (0, 0)
        if self.experiments:
            from operators.experiments import ExperimentScorer

            self._experiment = ExperimentScorer(self.schema, shadow_budget_ms=self.shadow_budget_ms,
                                                window_ms=self.comparison_window_ms,
                                                scorer=ctx.get_index_of_this_subtask(),
                                                intra_op_num_threads=self.intra_op_threads, **self.load_options)
            self._follower = self._model.source if hasattr(self._model.source, "challengers") else None
            self._shadow_skipped = metrics.counter("shadow_skipped")
            self._shadow_scored = metrics.counter("shadow_batches")
            self._canary_served = metrics.counter("canary_served")
            self._canary_fallbacks = metrics.counter("canary_fallbacks")
            self._compared = {role: metrics.counter(f"{role}_compared") for role in (steps.SHADOW, steps.CANARY)}
            self._agreement = {steps.SHADOW: PPM, steps.CANARY: PPM}
            for role in (steps.SHADOW, steps.CANARY):     # the newest closed window's (the lowest of its pairs)
                metrics.gauge(f"{role}_agreement_ppm", lambda role=role: self._agreement[role])
            self._counted = (0, 0, 0, 0)

    def map(self, batch: MicroBatch) -> steps.ScoredBatch:
        started = steps.now_ms()
        scored = self._score_routed(batch) if self._router is not None else self._score_champion(batch)
        self._score_ms.update(int(steps.now_ms() - started))
        self._rejected.inc(scored.rejected)    # rows refused by the schema, not failed batches
        self._failed.inc(scored.failed)
        return scored

    def _score_champion(self, batch: MicroBatch) -> steps.ScoredBatch:
        """``batch`` scored by the champion (the newest version its source gave), with its challengers."""
        model = self._model.current()
        if (self._model.reloads, self._model.failures) != self._seen:
            self._reloads.inc(self._model.reloads - self._seen[0])
            self._refused.inc(self._model.failures - self._seen[1])
            self._seen = (self._model.reloads, self._model.failures)
        if self._experiment is None:
            return steps.score_batch(batch, model, self.schema)
        return self._score_with_challengers(batch, model)

    def _score_routed(self, batch: MicroBatch) -> steps.ScoredBatch:
        router = self._router
        scored = router.score(batch)
        for name, count in router.route_events.items():
            if count != self._route_counts[name]:
                self._route_counters[name].inc(count - self._route_counts[name])
                self._route_counts[name] = count
        if router.no_route != self._no_route_count:
            self._no_route.inc(router.no_route - self._no_route_count)
            self._no_route_count = router.no_route
        return scored

    def _score_with_challengers(self, batch: MicroBatch, model) -> steps.ScoredBatch:
        x = self._experiment
        x.set_plan(self._follower.challengers() if self._follower is not None else self.challengers)
        scored = x.score(batch, model)
        counts = (x.shadow_skipped, x.shadow_batches, x.canary_events, x.canary_fallbacks)
        if counts != self._counted:
            for counter, now, before in zip((self._shadow_skipped, self._shadow_scored, self._canary_served,
                                             self._canary_fallbacks), counts, self._counted):
                counter.inc(now - before)
            self._counted = counts
        for summary in scored.experiment.comparisons if scored.experiment else ():
            role = summary["role"]
            self._compared[role].inc(summary["compared"])
            same_window = [w for k, w in x.windows.last.items()
                           if k[0] == role and w["window_start_ms"] == summary["window_start_ms"]]
            self._agreement[role] = min(int(round((w["agreement"] or 0) * PPM)) for w in same_window + [summary])
            if self._follower is not None:
                self._follower.record_comparison(summary, role)
        return scored

    def close(self) -> None:
        router = getattr(self, "_router", None)
        if router is not None:
            router.close()
        experiment = getattr(self, "_experiment", None)
        if experiment is not None:
            experiment.close()
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()


def score_micro_batches(stream: DataStream, *, model: str | Any, schema: EventSchema, intra_op_threads: int,
                        reload_interval_s: float = 5.0, load_options: dict | None = None,
                        experiments: bool = False, challengers: ChallengerPlan | None = None,
                        shadow_budget_ms: float = 200.0, comparison_window_ms: int = 10_000,
                        routes: Any = None) -> DataStream:
    """Score every micro-batch (``model``: a file path or a model source spec; ``routes``: a
    ``jobs.config.RoutePlan`` instead; see ScoreMicroBatch)."""
    function = ScoreMicroBatch(model, schema, intra_op_threads, reload_interval_s, load_options,
                               experiments=experiments, challengers=challengers, shadow_budget_ms=shadow_budget_ms,
                               comparison_window_ms=comparison_window_ms, routes=routes)
    return stream.map(function, Types.PICKLED_BYTE_ARRAY()).name("score").uid("score-model")

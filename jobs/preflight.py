"""Checks before a job is submitted: what can be found wrong now is reported in one line instead
of failing inside a running task (where Flink would restart it over and over).

* the model file exists, loads, and its required inputs are event fields or features of the
  store, with compatible types (with ``routes``: every routed model);
* the feature store answers and serves a table;
* the broker answers and the input, prediction and dead-letter topics exist.

Failures raise :class:`jobs.errors.UserError` with the message to print. Transient trouble
after the job has started (a store restart, a broker outage) is left to the job's retries and
Flink's restarts.
"""
from __future__ import annotations

import difflib

from pathlib import Path
from typing import Callable

from jobs.config import JobConfig
from jobs.errors import UserError

_NUMERIC_MODEL = {"float", "double", "integer"}
_EVENT_KINDS = {"int": "numeric", "float": "numeric", "bool": "boolean", "string": "string"}


def check_model(cfg: JobConfig, where: str = "model.path"):
    """Load the model (raises UserError naming the file); returns it (caller closes it). With
    ``model.registry``: the deployment's champion, fetched and sha256-checked."""
    if cfg.model.follows_registry:
        return registry_champion(cfg)[0]
    path = Path(cfg.model.path)
    if "://" not in cfg.model.path and not path.exists():      # before importing the model runtimes
        raise UserError(f"model file not found: {cfg.model.path} ({where})")
    from model_formats import ModelLoadError, load_model

    try:
        return load_model(cfg.model.path)
    except (ModelLoadError, OSError, ValueError) as exc:
        raise UserError(f"model file {cfg.model.path} does not load: {' '.join(str(exc).split())}") from exc


def registry_champion(cfg: JobConfig) -> tuple[object, dict[str, str] | None]:
    """The deployment's champion, loaded (caller closes it), and the feature columns of the
    snapshot it pins (name → Arrow type; None when none is pinned): the job materializes that
    snapshot into the host's store, which may be empty until then."""
    from model_formats import ModelLoadError, load_model
    from registry import RegistryError, open_registry

    m = cfg.model
    try:
        with open_registry(m.registry) as reg:
            deployment = reg.deployment(m.name, m.env)
            if deployment is None:
                names = reg.model_names()
                known = f"registered models: {', '.join(names)}" if names else "nothing is registered yet"
                close = difflib.get_close_matches(m.name, names, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UserError(f"no deployment of {m.name!r} in {m.env!r} in the registry {m.registry} "
                                f"(model.name, model.env); {hint}{known}")
            mv = deployment.champion
            path = reg.fetch_model(mv)
    except RegistryError as exc:
        raise UserError(f"registry {m.registry} (model.registry): {' '.join(str(exc).split())}") from exc
    pinned = deployment.features
    columns = None if pinned is None else \
        {c["name"]: c["type"] for c in pinned.columns if c["name"] != pinned.key_column}
    try:
        return load_model(path, name=mv.name, version=str(mv.version), **m.load_options()), columns
    except (ModelLoadError, OSError, ValueError) as exc:
        raise UserError(f"{mv.name} version {mv.version} from the registry does not load: "
                        f"{' '.join(str(exc).split())}") from exc


def model_label(cfg: JobConfig) -> str:
    """How messages name the model: its file, or the registry deployment."""
    m = cfg.model
    return f"{m.name} ({m.env} in the registry)" if m.follows_registry else m.path


def feature_columns(cfg: JobConfig, timeout_s: float = 5.0) -> dict[str, str]:
    """The store's feature names → Arrow type names (raises UserError when it cannot be read)."""
    from connectors.feature_store import FeatureStoreError, open_store

    uri = cfg.features.store
    try:
        with open_store(uri, timeout_s=timeout_s) as store:
            schema = store.schema
            schema = schema() if callable(schema) else schema
    except FeatureStoreError as exc:
        raise UserError(f"feature store {uri} (features.store) is not usable: {' '.join(str(exc).split())}") from exc
    except Exception as exc:  # noqa: BLE001 - any backend's connection error is the same problem here
        raise UserError(f"feature store {uri} (features.store) is not reachable: "
                        f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    return {f.name: str(f.type) for f in schema}


def check_model_fits(model, cfg: JobConfig, features: dict[str, str], label: str | None = None) -> None:
    """Every required model input must be an event field or a feature, of a usable type
    (``label``: how the message names the model; default :func:`model_label`)."""
    events = cfg.events.fields
    problems = []
    for spec in model.schema.inputs:
        if spec.name in features:
            kind = "string" if features[spec.name] in ("string", "large_string") else "numeric"
        elif spec.name in events:
            kind = _EVENT_KINDS.get(events[spec.name], "string")
        else:
            if spec.required:
                problems.append(f"input {spec.name!r} is neither an event field nor a feature")
            continue
        if spec.dtype in _NUMERIC_MODEL and kind == "string":
            problems.append(f"input {spec.name!r} is numeric in the model but a string in the "
                            f"{'store' if spec.name in features else 'events'}")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UserError(f"model {label or model_label(cfg)} does not fit the events and features: {shown} "
                        f"(events.fields: {', '.join(events)}; the store has {len(features)} features)")


def check_topics(cfg: JobConfig, timeout_s: float = 5.0) -> dict[str, int]:
    """The broker answers and the job's topics exist (listed, never auto-created);
    returns topic → partitions."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    k = cfg.kafka
    admin = AdminClient({"bootstrap.servers": k.bootstrap_servers, "log_level": 0,
                         **{key: v for key, v in k.consumer.items() if key.startswith(("security.", "sasl.", "ssl."))}})
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise UserError(f"no Kafka broker answers at {k.bootstrap_servers} (kafka.bootstrap_servers) "
                        f"within {timeout_s:.0f} s; start one with `streamscore dev up`") from exc
    wanted = {"kafka.input_topic": k.input_topic}
    if cfg.sink.kind in ("kafka", "both"):
        wanted.update({"kafka.output_topic": k.output_topic, "kafka.dead_letter_topic": k.dead_letter_topic})
        if cfg.model.shadows or cfg.model.canary:     # a followed deployment's are optional (see kafka_sink)
            wanted.update({"kafka.shadow_topic": k.shadow_topic_name(),
                           "kafka.comparison_topic": k.comparison_topic_name()})
    found = {}
    for key, name in wanted.items():
        md = topics.get(name)
        if md is None or md.error is not None or not md.partitions:
            existing = sorted(t for t in topics if not t.startswith("__"))
            close = difflib.get_close_matches(name, existing, n=3, cutoff=0.6)
            listed = (f"did you mean {', '.join(map(repr, close))}?" if close else
                      f"it has: {', '.join(existing[:12]) or 'no topics'}{' …' if len(existing) > 12 else ''}")
            raise UserError(f"unknown topic {name!r} ({key}) on {k.bootstrap_servers}; {listed} (create it, or "
                            f"`streamscore dev up --config job.yaml` creates the topics the config names)")
        found[name] = len(md.partitions)
    return found


def check_routes(cfg: JobConfig, say: Callable[[str], None] = print,
                 features: Callable[[], dict[str, str]] | None = None) -> None:
    """Every routed model loads (a file exists first) and fits the events and features
    (``features``: the store's columns, asked for once, after the first model loaded)."""
    from jobs.config import is_model_file
    from model_formats import ModelLoadError
    from registry import RegistryError

    plan = cfg.route_plan()
    labels: dict[str, str] = {}          # each model once, named with the first route that has it
    for route in plan.routes:
        for ref in route.models:
            labels.setdefault(ref, f"{ref} (route {route.name})")
    for ref, label in labels.items():    # every file is there, before any is loaded
        if is_model_file(ref) and "://" not in ref and not Path(ref).exists():
            raise UserError(f"model file not found: {label}")
    columns: dict[str, str] | None = None
    for ref, label in labels.items():
        say(f"checking the model {label}…")
        try:
            model = plan.load(ref, cfg.model.load_options())
        except (ModelLoadError, RegistryError, OSError, ValueError) as exc:
            raise UserError(f"model {label} does not load: {' '.join(str(exc).split())}") from exc
        try:
            if columns is None:
                columns = (features or (lambda: feature_columns(cfg)))()
            check_model_fits(model, cfg, columns, label)
        finally:
            model.close()


def preflight(cfg: JobConfig, say: Callable[[str], None] = print) -> None:
    """Run every check (cheapest first); raises UserError with one line at the first failure."""
    if cfg.routes:          # model.path is not served then
        check_routes(cfg, say)
        say(f"checking the topics on {cfg.kafka.bootstrap_servers}…")
        check_topics(cfg)
        return
    say(f"checking the model {model_label(cfg)}…")
    pinned = None
    if cfg.model.follows_registry:
        model, pinned = registry_champion(cfg)
    else:
        model = check_model(cfg)
    try:
        if pinned is None:
            say(f"checking the feature store {cfg.features.store}…")
            features = feature_columns(cfg)
        else:      # the job loads the pinned snapshot into the host's store itself
            features = pinned
        check_model_fits(model, cfg, features)
    finally:
        model.close()
    say(f"checking the topics on {cfg.kafka.bootstrap_servers}…")
    check_topics(cfg)

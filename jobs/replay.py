"""`streamscore registry replay`: a candidate model version scored on a recorded range of the input
topic, beside the champion of that time and with the feature snapshot that was live then, on the
Beam pipeline's bounded mode (DirectRunner); its comparison windows are recorded in the registry
as a replay and printed as the report table, before the candidate ever sees live traffic.

What was live when: the records' Kafka timestamps at the range's ends, against the deployment's
champion changes in the audit log (``promote``/``rollback``, each with its feature snapshot). A
range during which the champion or the snapshot changed is refused (replay the parts separately),
as is a range before the first promotion.

Features: the store the job config names serves them if it serves that very snapshot now
(``name@version``); otherwise the snapshot is read from the registry's durable storage (checksum
checked) into a private ``arrow-shm`` store for the replay's length, and a snapshot that storage
no longer holds, or holds changed, is refused. Nothing is written to the live topics: predictions,
shadow predictions, dead letters and comparisons go to JSON-lines files (``--output``).

Replayed windows are the candidate's shadow windows in event time (each micro-batch cut at the
window boundaries), recorded with ``scorer`` -1 and ``source: replay``: ``registry report`` shows
them apart from live ones, and a gated ``promote`` does not count them (see
``Registry.comparison_evidence``).
"""
from __future__ import annotations

import glob
import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from jobs.config import JobConfig


class ReplayRefused(Exception):
    """The replay cannot be run as asked (the message says why and what to do)."""


@dataclass
class ReplayResult:
    """What a replay did: the models and snapshot, the range, its outputs and its windows."""
    champion: str                   # name@version live then
    candidate: str
    features: str | None            # the snapshot live then (None: the deployment pinned none)
    from_ms: int                    # Kafka timestamps of the first and last replayed records
    to_ms: int
    output_prefix: str
    counts: dict[str, int] = field(default_factory=dict)       # predictions, shadow, dead_letters
    windows: list[dict] = field(default_factory=list)          # the comparison summaries, as recorded


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def live_then(reg: Any, name: str, env: str, start_ms: int, end_ms: int) -> Any:
    """The audit entry of the champion (and feature snapshot) serving ``name`` in ``env`` from
    ``start_ms`` to ``end_ms`` (``Registry.champion_during``); refused when nothing served yet or
    it changed in between."""
    from registry import PolicyRefused

    try:
        return reg.champion_during(name, env, _when(start_ms), _when(end_ms))
    except PolicyRefused as exc:
        advice = "; replay the parts before and after it separately" if "changed within" in str(exc) else ""
        raise ReplayRefused(f"{exc}{advice}") from None


def record_range(cfg: JobConfig, from_offsets: dict[int, int], to_offsets: dict[int, int]) -> tuple[int, int]:
    """Check the offsets against the topic's partitions; the Kafka timestamps (ms) of the first and
    the last record of the range."""
    from connectors.kafka.clients import consumer_config, partitions_of
    from connectors.kafka.partition_reader import record_timestamps

    k = cfg.kafka
    partitions = partitions_of(k.bootstrap_servers, k.input_topic)
    for label, offsets in (("--from-offsets", from_offsets), ("--to-offsets", to_offsets)):
        if set(offsets) != set(partitions):
            raise ReplayRefused(f"{label} must name every partition of {k.input_topic} once ({partitions}), "
                                f"not {sorted(offsets)}")
    backwards = [p for p in partitions if to_offsets[p] < from_offsets[p]]
    if backwards:
        raise ReplayRefused(f"--to-offsets before --from-offsets in partition(s) {backwards}")
    read = [p for p in partitions if to_offsets[p] > from_offsets[p]]
    if not read:
        raise ReplayRefused("the range is empty: --to-offsets equal --from-offsets in every partition")
    consumer = consumer_config(k.bootstrap_servers, f"{k.group_id}-replay-{uuid.uuid4().hex[:8]}", k.consumer)
    try:
        first = record_timestamps(consumer, k.input_topic, {p: from_offsets[p] for p in read})
        last = record_timestamps(consumer, k.input_topic, {p: to_offsets[p] - 1 for p in read})
    except LookupError as exc:
        raise ReplayRefused(f"the range is not on the broker: {exc}") from None
    return min(first.values()), max(last.values())


def replay_store(cfg: JobConfig, reg: Any, snapshot: Any, champion: Any) -> tuple[str, Callable[[], None]]:
    """The feature store URI serving ``snapshot`` for the replay, and how to clean it up: the
    configured store if it serves exactly that snapshot now, else a private arrow-shm store loaded
    from the registry's durable copy (refused when that copy is gone or changed)."""
    from connectors.feature_store import is_shared_memory, load_table
    from registry.materialize import check_fits, served

    ref = f"{snapshot.name}@{snapshot.version}"
    try:
        check_fits(snapshot, champion)
    except Exception as exc:  # noqa: BLE001 - PolicyRefused: say it as the replay's refusal
        raise ReplayRefused(str(exc)) from None
    if is_shared_memory(cfg.features.store) and served(cfg.features.store)[0] == ref:
        return cfg.features.store, lambda: None
    try:
        table = reg.fetch_snapshot(snapshot)
    except Exception as exc:  # noqa: BLE001 - missing files, checksum mismatch, unreachable storage
        raise ReplayRefused(f"feature snapshot {ref}, live during the range, is no longer available: the store "
                            f"{cfg.features.store} does not serve it and the registry's copy at {snapshot.uri} "
                            f"cannot be read ({type(exc).__name__}: {exc}); a replay with other features would "
                            "not be the traffic as it was scored") from None
    base = "/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()
    folder = Path(base) / f"streamscore-replay-{uuid.uuid4().hex[:12]}"
    load_table(f"arrow-shm://{folder}", table, key=snapshot.key_column, lineage=ref)
    return f"arrow-shm://{folder}", lambda: shutil.rmtree(folder, ignore_errors=True)


def replay(cfg: JobConfig, *, registry: str, name: str, env: str, candidate: int | str,
           from_offsets: dict[int, int], to_offsets: dict[int, int], output_prefix: str,
           beam_args: list[str] | None = None, say: Callable[[str], None] = print) -> ReplayResult:
    """Run the replay (see the module docstring); raises ReplayRefused when it cannot be run."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from jobs.beam_score import build
    from model_formats.reloading import Candidate, ChallengerOffer, ChallengerPlan
    from registry import REPLAY_SCORER, open_registry
    from registry.follow import model_id

    if cfg.routes:
        raise ReplayRefused("a replay compares a champion and a candidate; the config's routes would not be "
                            "replayed: use a config without routes")
    with open_registry(registry) as reg:
        reg.environment(env)
        wanted = reg.model_version(name, candidate)
        start_ms, end_ms = record_range(cfg, from_offsets, to_offsets)
        then = live_then(reg, name, env, start_ms, end_ms)
        champion = reg.model_version(name, then.to_version)
        if champion.version == wanted.version:
            raise ReplayRefused(f"v{wanted.version} was the champion of {name} in {env} during the range: "
                                "there is nothing to compare it with")
        snapshot = reg.snapshot(then.features) if then.features else None
        champion_path = reg.fetch_model(champion)
        candidate_path = reg.fetch_model(wanted)
        if snapshot is not None:
            store, cleanup = replay_store(cfg, reg, snapshot, champion)
        else:
            store, cleanup = cfg.features.store, (lambda: None)
            say(f"the deployment pinned no feature snapshot then: features come from {store} as it is now")
    result = ReplayResult(champion=f"{name}@{champion.version}", candidate=f"{name}@{wanted.version}",
                          features=then.features, from_ms=start_ms, to_ms=end_ms, output_prefix=output_prefix)
    say(f"replaying {cfg.kafka.input_topic} offsets {_offsets(from_offsets)} .. {_offsets(to_offsets)} "
        f"({_when(start_ms).isoformat()} .. {_when(end_ms).isoformat()}): champion then v{champion.version}, "
        f"candidate v{wanted.version} as a shadow, features {then.features or 'unpinned'} from {store}")
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.model = cfg.model.model_copy(update={
        "path": model_id(champion_path, champion.name, champion.version), "registry": None, "name": None,
        "shadows": [], "canary": None})
    run_cfg.features.store = store
    plan = ChallengerPlan((ChallengerOffer("shadow", Candidate(candidate_path, name=wanted.name,
                                                               version=str(wanted.version))),), f"{name}/{env}")
    tag = {"scorer": REPLAY_SCORER, "source": "replay",
           "replay": {"topic": cfg.kafka.input_topic, "from_offsets": _offsets(from_offsets),
                      "to_offsets": _offsets(to_offsets), "from_ms": start_ms, "to_ms": end_ms,
                      "features": then.features}}
    try:
        options = PipelineOptions(list(beam_args or []) or ["--runner=DirectRunner"])
        with beam.Pipeline(options=options) as p:
            build(p, run_cfg, start_offsets=from_offsets, stop_offsets=to_offsets, output_files=output_prefix,
                  challengers=plan,
                  record_comparisons={"registry": registry, "name": name, "env": env, "tag": tag})
    finally:
        cleanup()
    result.counts = {kind: _count_lines(f"{output_prefix}-{kind}*.jsonl")
                     for kind in ("predictions", "shadow", "dead-letters")}
    result.windows = [{**json.loads(line), **tag} for path in sorted(glob.glob(f"{output_prefix}-comparisons*.jsonl"))
                      for line in Path(path).read_text().splitlines() if line.strip()]
    return result


def _offsets(offsets: dict[int, int]) -> str:
    return ",".join(f"{p}={o}" for p, o in sorted(offsets.items()))


def _count_lines(pattern: str) -> int:
    return sum(sum(1 for line in Path(path).read_text().splitlines() if line.strip()) for path in glob.glob(pattern))

"""The real Flink job following a registry deployment (issue #13), one job for every scenario:

* it starts on a host whose feature store is empty and finds its features (materialized from the
  deployment's snapshot, no ``features load``);
* a promotion mid-stream: per partition the predictions switch from version 1 to 2 exactly once;
* a new feature snapshot pinned mid-stream: the host store switches, every prediction names the
  snapshot whose features scored it (checked against offline scoring with that snapshot: no
  event is scored with a mix of versions), one switch per partition;
* a rollback mid-stream, back to what the deployment says;
* refused versions (an artifact failing its sha256, a model needing inputs nobody has): the
  serving version keeps scoring and the refusals are in ``registry history``;
* every input record accounted for exactly once, by its coordinates, throughout;
* two scorers (parallelism 2), each following on its own: still one switch per partition, and
  one refusal entry per version for the host.

SQLite registry (the PostgreSQL LISTEN/NOTIFY path: tests/test_registry_follow.py)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from connectors.embedded.plasma_server import PlasmaServer
from jobs import demo_data
from jobs.config import ModelSettings
from jobs.producer import produce
from job_helpers import offline_scores
from registry import Environment, open_registry, write_dataset

pytestmark = pytest.mark.slow

WHO = dict(actor="tester")
ENV = "production"
NAME = "fraud"
PHASE_EVENTS = 300          # events before and after each change
PROBE_EVENTS = 60           # events sent until every partition shows the change
PARTITIONS = 2


class Run:
    """The running job, its registry, and every input coordinate produced so far."""

    def __init__(self, stack, cfg, job, reader, reg, paths: dict[str, Path], tables: dict[str, pa.Table]):
        self.stack, self.cfg, self.job, self.reader, self.reg = stack, cfg, job, reader, reg
        self.paths, self.tables = paths, tables         # model version -> file, snapshot ref -> table
        self.events: dict[str, dict] = {}               # event id -> event
        self.coords: list[str] = []
        self.seed = 1000

    def send(self, n: int) -> list[str]:
        """Produce ``n`` events and wait until each is accounted for; their coordinates."""
        self.seed += 1
        events = demo_data.events(n, self.stack.entities, seed=self.seed, prefix=f"r{self.seed}")
        coords = produce(self.cfg.kafka.bootstrap_servers, self.cfg.kafka.input_topic, events,
                         encode=demo_data.encode, settings=self.cfg.kafka.producer)
        assert len(coords) == n
        tally = self.reader.wait_for(set(coords), timeout_s=300, stall_s=120, check=self.job.check_alive)
        missing = tally.missing(set(coords))
        assert not missing, f"{len(missing)} inputs neither predicted nor dead-lettered, e.g. {sorted(missing)[:3]}"
        self.events.update({e["id"]: e for e in events})
        self.coords += coords
        return coords

    def lineage(self, coords) -> list[tuple[str, str]]:
        tally = self.reader.snapshot()
        return [(tally.predictions[c]["model_version"], tally.predictions[c]["features"]) for c in coords
                if c in tally.predictions]

    def until_every_partition_shows(self, expected: tuple[str, str], what: str) -> list[str]:
        """Probe batches until the newest prediction of every partition has ``expected`` lineage."""
        coords: list[str] = []
        deadline = time.monotonic() + 180
        while True:
            coords += self.send(PROBE_EVENTS)
            newest = {}
            tally = self.reader.snapshot()
            for c in coords:
                if c in tally.predictions:
                    partition, _, offset = c.rpartition("/")
                    p = tally.predictions[c]
                    newest[partition] = max(newest.get(partition, (-1, None)), (int(offset), (p["model_version"],
                                                                                             p["features"])))
            if len(newest) == PARTITIONS and all(v[1] == expected for v in newest.values()):
                return coords
            assert time.monotonic() < deadline, f"waited 180 s for {what}; newest per partition: {newest}"

    def phase(self, change, expected: tuple[str, str], what: str) -> list[str]:
        """PHASE_EVENTS before ``change()``, probes until it shows everywhere, PHASE_EVENTS after:
        the phase's coordinates (all scored, before by the old lineage, after by ``expected``)."""
        before = self.send(PHASE_EVENTS)
        change()
        during = self.until_every_partition_shows(expected, what)
        after = self.send(PHASE_EVENTS)
        assert set(self.lineage(after)) == {expected}, what
        return before + during + after


def switches(tally, coords) -> dict[str, list[tuple[int, tuple, tuple]]]:
    """Per partition, in offset order, every change of (model_version, features)."""
    by_partition: dict[str, list] = {}
    for c in coords:
        if c in tally.predictions:
            partition, _, offset = c.rpartition("/")
            p = tally.predictions[c]
            by_partition.setdefault(partition, []).append((int(offset), (p["model_version"], p["features"])))
    out = {}
    for partition, rows in by_partition.items():
        rows.sort()
        out[partition] = [(o, a, b) for (_, a), (o, b) in zip(rows, rows[1:]) if a != b]
    return out


def await_refusal(run, reg, version: int, timeout_s: float = 180) -> dict:
    """Send probe events (the scorer tries replacements between micro-batches) until the job has
    refused ``version``; the job's refusals by version."""
    deadline = time.monotonic() + timeout_s
    while True:
        refused = {e.to_version: e for e in reg.history(NAME, env=ENV) if e.action == "refused-by-job"}
        if version in refused:
            return refused
        run.job.check_alive()
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f} s for the job to refuse version {version}; " \
                                            f"history: {[(e.action, e.to_version) for e in reg.history(NAME, env=ENV)]}"
        run.send(PROBE_EVENTS)


def first_lineage(tally, coords) -> dict[str, tuple]:
    """Per partition, the lineage of its first prediction among ``coords`` (offset order)."""
    first: dict[str, tuple[int, tuple]] = {}
    for c in coords:
        if c in tally.predictions:
            partition, _, offset = c.rpartition("/")
            p = tally.predictions[c]
            if partition not in first or int(offset) < first[partition][0]:
                first[partition] = (int(offset), (p["model_version"], p["features"]))
    return {k: v[1] for k, v in first.items()}


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry-job")
    reg = open_registry(f"sqlite:///{tmp / 'registry.db'}", cache_dir=tmp / "registry-cache")
    reg.init(environments=[Environment(ENV, 0)])
    s1_table = stack.features
    s2_table = pa.table([s1_table.column(0)] + [pc.multiply(c, pa.scalar(1.5, c.type)) for c in s1_table.columns[1:]],
                        names=s1_table.column_names)                # other values, same schema
    s1 = reg.register_snapshot("customers", write_dataset(s1_table, str(tmp / "durable"), "customers"),
                               key_column="entity_id", reason="snapshot 1", **WHO)
    s2 = reg.register_snapshot("customers", write_dataset(s2_table, str(tmp / "durable"), "customers"),
                               key_column="entity_id", reason="snapshot 2", **WHO)
    paths = {"1": Path(stack.model_path), "2": demo_data.demo_model(stack.entities, version="2")}
    for version in ("1", "2"):
        reg.register_model(NAME, str(paths[version]), feature_set=s1, reason=f"model {version}", **WHO)
    reg.promote(NAME, 1, ENV, features=s1.ref, reason="start", **WHO)
    with PlasmaServer(tmp / "host.sock", 256 << 20, log_path=tmp / "plasma.log") as host:   # empty: a new host
        cfg = stack.job_config("registry-job", partitions=PARTITIONS, flink__parallelism=2)   # two scorers
        cfg.features.store = host.uri("customers")
        cfg.model = ModelSettings(registry=reg.uri, name=NAME, env=ENV, follow_interval_s=0.5)
        job, reader = stack.start_job(cfg)
        try:
            yield Run(stack, cfg, job, reader, reg, paths, {s1.ref: s1_table, s2.ref: s2_table})
        finally:
            reader.stop()
            job.stop()
            reg.close()


def test_promotion_feature_switch_rollback_and_refusals_in_one_running_job(run, tmp_path):
    reg = run.reg
    # started on an empty host: its features came from the registry snapshot
    first = run.send(PHASE_EVENTS)
    assert set(run.lineage(first)) == {("1", "customers@1")}

    # 1. promotion mid-stream
    promoted = run.phase(lambda: reg.promote(NAME, 2, ENV, reason="better", **WHO), ("2", "customers@1"),
                         "version 2 everywhere")
    # 2. a new feature snapshot pinned mid-stream (materialized on the host, readers switch)
    refreshed = run.phase(lambda: reg.promote(NAME, 2, ENV, features="customers@2", reason="new features", **WHO),
                          ("2", "customers@2"), "snapshot customers@2 everywhere")
    # 3. rollback mid-stream, to what the registry then names as the deployment
    before = run.send(PHASE_EVENTS)
    d = reg.rollback(NAME, ENV, actor="ops", reason="drift")
    expected = (str(d.champion.version), d.features.ref)
    rolled = before + run.until_every_partition_shows(expected, f"the rollback to {expected}")
    rolled += run.send(PHASE_EVENTS)
    assert set(run.lineage(rolled[-PHASE_EVENTS:])) == {expected}

    # 4. refusals: an artifact changed at its source (sha256), a model needing an input nobody has
    bad = tmp_path / "v3.onnx"
    bad.write_bytes(run.paths["2"].read_bytes())
    reg.register_model(NAME, str(bad), reason="will be corrupted", **WHO)             # v3
    bad.write_bytes(bad.read_bytes()[:4000])
    reg.promote(NAME, 3, ENV, reason="corrupt at its source", **WHO)
    # one promotion at a time: a follower acts on the deployment's newest revision, so a version
    # promoted over before the job got to it is never tried (nor refused)
    refused = await_refusal(run, reg, 3)
    from sklearn.linear_model import LogisticRegression

    from model_formats.export import export_onnx

    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    needy = export_onnx(LogisticRegression().fit(x, x[:, 0] > 0), ["amount", "brand_new_feature"],
                        tmp_path / "v4.onnx", name="needy", version="4")
    reg.register_model(NAME, str(needy), reason="needs an input the events lack", **WHO)  # v4
    reg.promote(NAME, 4, ENV, reason="incompatible", event_fields="amount:double,brand_new_feature:double", **WHO)
    refused = await_refusal(run, reg, 4)
    assert "sha256" in refused[3].reason and refused[3].actor.startswith("job:")
    assert "brand_new_feature" in refused[4].reason
    still = run.send(PHASE_EVENTS)           # (both scorers have met both versions by now)
    entries = [e.to_version for e in reg.history(NAME, env=ENV) if e.action == "refused-by-job"]
    assert sorted(entries) == [3, 4], f"one refusal per version on this host, not per scorer: {entries}"
    assert set(run.lineage(still)) == {expected}, "the serving version must stay after refusals"

    # exact accounting by input coordinates, over the whole run
    tally = run.reader.snapshot()
    coords = set(run.coords)
    assert len(coords) == len(run.coords)
    assert not tally.missing(coords) and not (set(tally.predictions) & set(tally.dead_letters) & coords)
    assert not (tally.duplicate_ids & coords), "no restart happened: no input may come out twice"
    # one switch per partition for each change, never back and forth
    for name, phase, old, new in (("promotion", promoted, ("1", "customers@1"), ("2", "customers@1")),
                                  ("feature switch", refreshed, ("2", "customers@1"), ("2", "customers@2")),
                                  ("rollback", rolled, ("2", "customers@2"), expected)):
        seen = switches(tally, phase)
        first = first_lineage(tally, phase)
        # every partition ends on the new lineage and switches at most once, old -> new; where a
        # partition had events before the change (the producer's sticky partitioner may have put a
        # whole batch in the other one) it switched exactly once
        assert len(seen) == PARTITIONS and all(len(s) <= 1 and all(x[1:] == (old, new) for x in s)
                                               for s in seen.values()), (name, seen)
        assert all(len(seen[p]) == 1 for p, lineage in first.items() if lineage == old), (name, seen, first)
        assert any(len(s) == 1 for s in seen.values()), (name, "no partition switched mid-stream", seen)
    # every prediction's score is what its named model and snapshot give offline: no mixed versions
    predicted = [c for c in run.coords if c in tally.predictions]
    by_lineage: dict[tuple, list[str]] = {}
    for c in predicted:
        p = tally.predictions[c]
        by_lineage.setdefault((p["model_version"], p["features"]), []).append(c)
    for (version, features), group in by_lineage.items():
        ids = [tally.predictions[c]["event_id"] for c in group]
        want = offline_scores(run.paths[version], run.tables[features], run.events, ids)
        got = np.array([tally.predictions[c]["score"] for c in group])
        assert np.abs(got - want).max() <= 1e-5, (version, features)
    print(f"\n{len(coords):,} inputs; lineages {sorted((k, len(v)) for k, v in by_lineage.items())}; "
          f"refused {sorted(refused)}")


def test_beam_job_follows_the_registry_as_far_as_the_direct_runner_allows(stack, tmp_path):
    """The Beam job (DirectRunner, bounded read) with model.registry: RunInference's model-update
    side input carries the registry's champion history in event time, so events before the
    promotion's window are scored by version 1 and after it by version 2, named as registered.
    (A side input that updates while a pipeline runs needs a streaming runner: not run here.)"""
    import json
    import math
    import uuid
    from collections import Counter

    from beam_helpers import onnx_variant, read_outputs, run_bounded

    reg = open_registry(f"sqlite:///{tmp_path / 'registry.db'}", cache_dir=tmp_path / "registry-cache")
    reg.init(environments=[Environment(ENV, 0)])
    v2_path = onnx_variant(stack.model_path, tmp_path / "v2.onnx", version="two")
    reg.register_model(NAME, str(stack.model_path), reason="v1", **WHO)
    reg.register_model(NAME, str(v2_path), reason="v2", **WHO)
    reg.promote(NAME, 1, ENV, reason="start", **WHO)
    time.sleep(1.1)                 # the two promotions fall in different 1 s windows (the schedule's grain)
    reg.promote(NAME, 2, ENV, reason="promoted", **WHO)
    switch_s = math.ceil(reg.history(NAME, env=ENV)[0].at.timestamp())   # v2 from this window on
    reg.close()

    cfg = stack.job_config(f"beam-registry-{uuid.uuid4().hex[:6]}", partitions=2)
    cfg.model = ModelSettings(registry=reg.uri, name=NAME, env=ENV)
    before = demo_data.events(300, stack.entities, seed=71, prefix="before")
    after = demo_data.events(300, stack.entities, seed=72, prefix="after")

    def stamped(ts_ms):
        return lambda event: json.dumps({**event, "ts": ts_ms}).encode()

    coords = (produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, before, encode=stamped(switch_s * 1000 - 500))
              + produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, after, encode=stamped(switch_s * 1000 + 500)))
    run_bounded(cfg, coords, registry_schedule_s=1, registry_schedule_until_s=3)
    tally = read_outputs(cfg, coords)
    assert not tally.missing(set(coords)) and not tally.dead_letters and tally.duplicate_predictions == 0
    lineage = Counter((tally.predictions[c]["event_id"].split("-")[0], tally.predictions[c]["model"],
                       tally.predictions[c]["model_version"]) for c in coords)
    assert lineage == Counter({("before", NAME, "1"): 300, ("after", NAME, "2"): 300})

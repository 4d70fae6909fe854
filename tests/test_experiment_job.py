"""The real Flink job running a live experiment from a registry deployment (issue #14): champion
v1, shadow v2 (the same model under another version: full agreement), shadow v3 (raises on every
batch: onnxruntime refuses any batch size but 99,999) and canary v4 serving 30 % of the entities.

* accounting is exact: every input once in the main output or the dead-letter topic; every
  scored input once in the shadow topic (from v2; none from v3);
* the raising shadow changes nothing: every served score is the champion model's offline score,
  and its skipped batches are counted in the job's ``shadow_skipped`` metric;
* the canary serves exactly the entities ``canary_mask`` picks with the deployment's salt, and the
  same ones after the job restarts;
* comparison windows reach the comparison topic and the registry, and a gate on them refuses
  and then, with enough events compared, allows the promotion.

SQLite registry; one job (two partitions), restarted once."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from beam_helpers import onnx_variant
from connectors.kafka.clients import consumer_config, ensure_topics, partitions_of
from jobs import demo_data
from jobs.config import ModelSettings
from jobs.producer import produce
from job_helpers import decode_events, offline_scores
from operators.experiments import canary_mask
from registry import Environment, Gate, PolicyRefused, open_registry

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("experiment-job")]   # one worker: the tests build on each other

WHO = dict(actor="tester")
ENV = "production"
NAME = "fraud"
SALT = f"{NAME}/{ENV}"
SHARE = 0.3
PARTITIONS = 2


class TopicReader:
    """Every JSON record of some topics, read from the beginning in a thread."""

    def __init__(self, bootstrap_servers: str, topics: list[str]) -> None:
        self.records: dict[str, list[dict]] = {t: [] for t in topics}
        self._consumer = Consumer(consumer_config(bootstrap_servers, "experiment-test-reader"))
        self._consumer.assign([TopicPartition(t, p, 0) for t in topics for p in partitions_of(bootstrap_servers, t)])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in self._consumer.consume(1000, 0.1):
                if m.error() is None:
                    with self._lock:
                        self.records[m.topic()].append(orjson.loads(m.value()))

    def get(self, topic: str) -> list[dict]:
        with self._lock:
            return list(self.records[topic])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


class Run:
    def __init__(self, stack, cfg, reg, paths):
        self.stack, self.cfg, self.reg, self.paths = stack, cfg, reg, paths
        self.job = self.reader = None
        self.topics = TopicReader(cfg.kafka.bootstrap_servers,
                                  [cfg.kafka.shadow_topic_name(), cfg.kafka.comparison_topic_name()])
        self.seed = 500

    def start(self) -> None:
        self.job, self.reader = self.stack.start_job(self.cfg)

    def stop(self) -> None:
        if self.reader is not None:
            self.reader.stop()
        if self.job is not None:
            self.job.stop()
        self.job = self.reader = None

    def send(self, records: list, timeout_s: float = 300) -> tuple[list[str], object]:
        coords = produce(self.cfg.kafka.bootstrap_servers, self.cfg.kafka.input_topic, records,
                         encode=demo_data.encode,
                         settings=self.cfg.kafka.producer)
        tally = self.reader.wait_for(set(coords), timeout_s=timeout_s, stall_s=120, check=self.job.check_alive)
        missing = tally.missing(set(coords))
        assert not missing, f"{len(missing)} inputs neither predicted nor dead-lettered, e.g. {sorted(missing)[:3]}"
        return coords, tally

    def events(self, n: int, entities: np.ndarray | None = None) -> list[dict]:
        self.seed += 1
        events = demo_data.events(n, self.stack.entities, seed=self.seed, prefix=f"x{self.seed}")
        if entities is not None:
            for e, entity in zip(events, entities):
                e["entity_id"] = int(entity)
        return events

    def shadow_ids(self) -> list[str]:
        return [p["prediction_id"] for p in self.topics.get(self.cfg.kafka.shadow_topic_name())]

    def await_shadows(self, wanted: set[str], timeout_s: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            ids = self.shadow_ids()
            if wanted <= set(ids) or time.monotonic() > deadline:
                return ids
            time.sleep(0.2)

    def metrics(self, names: tuple[str, ...]) -> dict[str, float]:
        pattern = re.compile(r"\.(" + "|".join(names) + r")$")
        return self.job.rest().operator_totals(pattern)


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment-job")
    reg = open_registry(f"sqlite:///{tmp / 'registry.db'}", cache_dir=tmp / "registry-cache")
    reg.init(environments=[Environment(ENV, 0)])
    champion = Path(stack.model_path)
    paths = {1: champion,
             2: onnx_variant(champion, tmp / "v2.onnx", version="2"),
             3: onnx_variant(champion, tmp / "v3.onnx", version="3", fixed_batch=99_999),   # raises on every batch
             4: onnx_variant(champion, tmp / "v4.onnx", version="4")}
    for version, path in paths.items():
        reg.register_model(NAME, str(path), reason=f"model {version}", **WHO)
    reg.promote(NAME, 1, ENV, reason="champion", **WHO)
    reg.promote(NAME, 2, ENV, role="shadow", reason="a faithful shadow", **WHO)
    reg.promote(NAME, 3, ENV, role="shadow", reason="a raising shadow", **WHO)
    reg.promote(NAME, 4, ENV, role="canary", share=SHARE, reason="a canary", **WHO)
    cfg = stack.job_config("experiment-job", partitions=PARTITIONS)
    cfg.model = ModelSettings(registry=reg.uri, name=NAME, env=ENV, follow_interval_s=0.5,
                              shadow_budget_ms=60_000, comparison_window_s=2)   # no shadow skips on time here
    cfg.flink.conf["metrics.fetcher.update-interval"] = 1000
    cfg.flink.restore_from = "latest"
    ensure_topics(cfg.kafka.bootstrap_servers, {cfg.kafka.shadow_topic_name(): PARTITIONS,
                                                cfg.kafka.comparison_topic_name(): 1})
    r = Run(stack, cfg, reg, paths)
    try:
        r.start()
        # the shadows load on threads of their own after the job starts: wait until v2 scores
        probe, _ = r.send(r.events(20))
        assert {f"{c}/{NAME}@2" for c in probe} <= set(r.await_shadows({f"{c}/{NAME}@2" for c in probe}))
        yield r
    finally:
        r.stop()
        r.topics.stop()
        reg.close()


def test_accounting_canary_and_a_raising_shadow(run, stack):
    records, reasons = demo_data.with_bad_events(run.events(3000), stack.entities, every=97)
    coords, tally = run.send(records)
    # main output and dead letters: each input exactly once
    assert not tally.duplicate_ids & set(coords)
    assert sorted(tally.dead_letters[coords[i]] for i in reasons) == sorted(reasons.values())
    predicted = [c for c in coords if c in tally.predictions]
    assert len(predicted) + len(reasons) == len(coords)
    # served scores: the champion model's, as if no shadow ran; versions: the canary's entities
    events = decode_events(records)
    rows = [tally.predictions[c] for c in predicted]
    offline = offline_scores(run.paths[1], stack.features, events, [p["event_id"] for p in rows])
    np.testing.assert_allclose([p["score"] for p in rows], offline, rtol=1e-5, atol=1e-6)
    entities = np.array([p["entity_id"] for p in rows])
    expected = np.where(canary_mask(entities, SALT, SHARE), "4", "1")
    assert [p["model_version"] for p in rows] == expected.tolist()
    assert {(p["model_version"], p["role"]) for p in rows} == {("1", "champion"), ("4", "canary")}
    # shadow topic: every scored input once, from v2; nothing from the raising v3
    wanted = {f"{c}/{NAME}@2" for c in predicted}
    ids = run.await_shadows(wanted)
    mine = [i for i in ids if i.rsplit("/", 1)[0] in set(coords)]
    assert sorted(mine) == sorted(wanted)
    assert not [i for i in ids if i.endswith(f"@3")]
    # the raising shadow's batches are counted as skipped
    deadline, seen = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        seen = run.metrics(("shadow_skipped", "shadow_batches", "canary_served"))
        if seen.get("shadow_skipped", 0) >= seen.get("shadow_batches", 1) > 0 and seen.get("canary_served"):
            break
        time.sleep(1)
    assert seen.get("shadow_skipped", 0) >= seen.get("shadow_batches", 1) > 0, seen
    run.first_served = {p["entity_id"]: p["model_version"] for p in rows}


def test_canary_serves_the_same_entities_after_a_restart(run):
    before = getattr(run, "first_served", None)
    if before is None:                     # run before (or without) the accounting test: serve some first
        coords, tally = run.send(run.events(3000))
        before = {tally.predictions[c]["entity_id"]: tally.predictions[c]["model_version"]
                  for c in coords if c in tally.predictions}
    run.stop()
    run.start()
    entities = np.array(sorted(before))[:1500]
    coords, tally = run.send(run.events(len(entities), entities))
    after = {tally.predictions[c]["entity_id"]: tally.predictions[c]["model_version"]
             for c in coords if c in tally.predictions}
    assert len(after) == len(entities) and all(after[e] == before[e] for e in after)
    assert 0.2 < sum(v == "4" for v in after.values()) / len(after) < 0.4


def test_comparisons_reach_the_topic_and_registry_and_gate_the_promotion(run):
    reg = run.reg
    deadline = time.monotonic() + 120
    while not (reg.comparisons(NAME, ENV, 2) and reg.comparisons(NAME, ENV, 4)):
        assert time.monotonic() < deadline, "no comparison windows in the registry"
        run.send(run.events(50))
        time.sleep(0.5)
    topic = run.topics.get(run.cfg.kafka.comparison_topic_name())
    pairs = {(w["champion"], w["challenger"], w["role"]) for w in topic}
    assert {(f"{NAME}@1", f"{NAME}@2", "shadow"), (f"{NAME}@1", f"{NAME}@4", "canary")} <= pairs
    assert all(w["agreement"] == 1.0 for w in topic) and not [w for w in topic if w["challenger"] == f"{NAME}@3"]
    have = reg.comparison_evidence(NAME, ENV, 2)["compared"]
    gate = Gate(min_agreement=0.99, min_compared=have + 1000)
    with pytest.raises(PolicyRefused, match="events compared"):
        reg.promote(NAME, 2, ENV, gate=gate, reason="not yet", **WHO)
    deadline = time.monotonic() + 300
    while reg.comparison_evidence(NAME, ENV, 2)["compared"] < have + 1000:
        assert time.monotonic() < deadline, f"evidence stayed at {reg.comparison_evidence(NAME, ENV, 2)}"
        run.send(run.events(500))
        time.sleep(0.5)
    d = reg.promote(NAME, 2, ENV, gate=gate, reason="the shadow agreed", **WHO)
    assert d.champion.version == 2 and [s.version for s in d.shadows] == [3]
    decisions = [e.action for e in reg.history(NAME, env=ENV)[:2]]
    assert decisions == ["promote", "promote-refused"]

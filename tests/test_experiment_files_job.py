"""The real Flink job running a live experiment from model files, no registry (issue #14):
``model.shadows`` (a faithful shadow and one that raises on every batch) and ``model.canary``
(half of the entities, salt = the job name). Every input once in the main output or the dead
letters, served scores the champion's, the canary's entities exactly ``canary_mask``'s, every
scored input once in the shadow topic, comparison windows in the comparison topic. The job writes
files too (``sink.kind: both``): after it ends, the committed ``predictions/`` and ``dead_letters/``
hold every input exactly once and ``shadow/`` exactly the faithful shadow's prediction of every
scored input, each once, tagged role ``shadow`` and its version (none in ``predictions/``)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from beam_helpers import onnx_variant
from connectors.kafka.clients import ensure_topics
from jobs import demo_data
from jobs.config import CanarySettings
from jobs.producer import produce
from job_helpers import decode_events, offline_scores, probe_until, produce_and_account, read_committed
from operators.experiments import canary_mask
from test_experiment_job import TopicReader

pytestmark = pytest.mark.slow

SHARE = 0.5


def test_shadows_and_canary_from_model_files(stack, tmp_path):
    champion = Path(stack.model_path)
    shadow = onnx_variant(champion, tmp_path / "shadow.onnx", version="2")
    raising = onnx_variant(champion, tmp_path / "raising.onnx", version="3", fixed_batch=99_999)
    canary = onnx_variant(champion, tmp_path / "canary.onnx", version="4")
    out = tmp_path / "out"
    cfg = stack.job_config("experiment-files", partitions=2, sink__kind="both", sink__path=out.as_uri(),
                           sink__roll_interval_s=2.0)
    cfg.model.shadows = [str(shadow), str(raising)]
    cfg.model.canary = CanarySettings(path=str(canary), share=SHARE)
    cfg.model.shadow_budget_ms = 60_000
    cfg.model.comparison_window_s = 1
    k = cfg.kafka
    ensure_topics(k.bootstrap_servers, {k.shadow_topic_name(): 2, k.comparison_topic_name(): 1})
    topics = TopicReader(k.bootstrap_servers, [k.shadow_topic_name(), k.comparison_topic_name()])
    job, reader = stack.start_job(cfg)
    try:
        name = "demo-fraud-gbm"
        probe_until(cfg, stack.entities,
                    lambda: any(p["model_version"] == "2" for p in topics.get(k.shadow_topic_name())),
                    "the shadow never scored", events=10, seed=3)
        records, reasons = demo_data.with_bad_events(demo_data.events(2000, stack.entities, seed=77, prefix="f"),
                                                     stack.entities, every=101)
        coords, tally, predicted = produce_and_account(cfg, job, reader, records, reasons)
        rows = [tally.predictions[c] for c in predicted]
        offline = offline_scores(champion, stack.features, decode_events(records), [p["event_id"] for p in rows])
        np.testing.assert_allclose([p["score"] for p in rows], offline, rtol=1e-5, atol=1e-6)
        entities = np.array([p["entity_id"] for p in rows])
        assert [p["model_version"] for p in rows] == \
            np.where(canary_mask(entities, cfg.job_name, SHARE), "4", "1").tolist()
        wanted = {f"{c}/{name}@2" for c in predicted}
        deadline = time.monotonic() + 120
        while not wanted <= {p["prediction_id"] for p in topics.get(k.shadow_topic_name())}:
            assert time.monotonic() < deadline, "shadow predictions missing"
            time.sleep(0.5)
        shadow_ids = [p["prediction_id"] for p in topics.get(k.shadow_topic_name())]
        assert sorted(i for i in shadow_ids if i.rsplit("/", 1)[0] in set(coords)) == sorted(wanted)
        assert not [i for i in shadow_ids if i.endswith("@3")]
        deadline = time.monotonic() + 60
        while True:     # windows close with the next batch after their end
            windows = topics.get(k.comparison_topic_name())
            roles = {(w["role"], w["challenger"]) for w in windows}
            if {("shadow", f"{name}@2"), ("canary", f"{name}@4")} <= roles:
                break
            assert time.monotonic() < deadline, f"comparison windows: {roles}"
            produce(k.bootstrap_servers, k.input_topic, demo_data.events(10, stack.entities, seed=4, prefix="tick"),
                    encode=demo_data.encode)
            time.sleep(1)
        assert all(w["agreement"] == 1.0 and w["champion"] == f"{name}@1" for w in windows)

        # the files: every input once in predictions/ or dead_letters/, the shadow's rows in shadow/
        expected = set(coords)
        deadline = time.monotonic() + 120        # the last files commit roll_interval_s after they opened
        while not (expected <= set(read_committed(out / "predictions", "prediction_id")) |
                   set(read_committed(out / "dead_letters", "source"))
                   and wanted <= set(read_committed(out / "shadow", "prediction_id"))):
            job.check_alive()
            assert time.monotonic() < deadline, "the files never accounted for every input"
            time.sleep(0.5)
        job.stop()
        served = read_committed(out / "predictions", "prediction_id")
        dead = read_committed(out / "dead_letters", "source")
        assert sorted(i for i in served if i in expected) == sorted(predicted)          # each once
        assert sorted(i for i in dead if i in expected) == sorted(expected - set(predicted))
        shadow_ids = read_committed(out / "shadow", "prediction_id")
        assert sorted(i for i in shadow_ids if i.rsplit("/", 1)[0] in expected) == sorted(wanted)
        assert set(read_committed(out / "shadow", "role")) == {"shadow"}
        assert set(read_committed(out / "shadow", "model_version")) == {"2"}      # the raising one wrote none
        assert set(read_committed(out / "predictions", "role")) == {"champion", "canary"}
        assert not [i for i in served if i.count("/") > 2]                       # no challenger's id served
    finally:
        reader.stop()
        job.stop()
        topics.stop()

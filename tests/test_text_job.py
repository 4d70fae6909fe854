"""A text model in the Flink job: events carry a free-text ``text`` field (declared ``string`` in
``events.fields``), the decoder lets it through, and a sentiment pipeline (TfidfVectorizer +
LogisticRegression, exported to ONNX by ``model_formats.export``) scores it. Every prediction must
equal scikit-learn's on the same text; an event without the text field is dead-lettered.

Real components: the embedded broker, Plasma (the enrichment still runs; the model ignores the
features), a Flink MiniCluster, onnxruntime."""
from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from jobs.producer import produce

pytestmark = pytest.mark.slow

POSITIVE = ["I love this", "great service, great people", "what a lovely day", "love it, génial",
            "best purchase ever", "so happy with this"]
NEGATIVE = ["I hate this", "awful service", "terrible, just terrible", "worst day ever", "so boring",
            "never again, awful"]


def sentiment_model():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = POSITIVE + NEGATIVE
    return make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts * 3, [1] * 6 * 3 + [0] * 6 * 3)


def test_flink_job_scores_a_text_field(stack, tmp_path):
    from model_formats.export import export_onnx

    pipe = sentiment_model()
    model_path = export_onnx(pipe, None, tmp_path / "sentiment.onnx", name="sentiment", version="1")
    fields = {"id": "string", "entity_id": "int", "amount": "float", "ts": "int", "text": "string"}
    cfg = stack.job_config("text", partitions=1, model__path=str(model_path), events__fields=fields)
    job, reader = stack.start_job(cfg)
    try:
        rng = np.random.default_rng(5)
        texts = [str(t) for t in rng.choice(POSITIVE + NEGATIVE + ["unseen words only", ""], 200)]
        events = [{"id": f"txt-{i}", "entity_id": int(rng.integers(0, stack.entities)), "amount": 1.0, "ts": 0,
                   "text": t} for i, t in enumerate(texts)]
        events.append({"id": "no-text", "entity_id": 1, "amount": 1.0, "ts": 0})
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, events,
                         encode=lambda e: orjson.dumps({**e, "ts": int(time.time() * 1000)}))
        tally = reader.wait_for(set(coords), timeout_s=240, stall_s=240, check=job.check_alive)
        assert not tally.missing(set(coords)), f"not accounted for: {sorted(tally.missing(set(coords)))[:5]}"
        predictions = {p["event_id"]: p for c, p in tally.predictions.items() if c in set(coords)}
        assert len(predictions) == 200 and tally.dead_letters[coords[-1]] == "missing_field"
        expected = pipe.predict_proba(texts)[:, 1]
        got = np.array([predictions[f"txt-{i}"]["score"] for i in range(200)])
        assert np.abs(got - expected).max() < 1e-5, np.abs(got - expected).max()
        assert all(predictions[f"txt-{i}"]["model"] == "sentiment" for i in range(200))
    finally:
        reader.stop()
        job.stop()

"""The core holds several models per micro-batch (issue #18, item 8): each result tagged with its
model, version and role; prediction ids unique per (input record, model); a one-model job's
output exactly as before. Lineage (issue #13): every prediction names model, version, the
feature snapshot (``name@version`` from the store's answer) and role."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from beam_helpers import onnx_variant
import pyarrow.compute as pc

from connectors.events import DecoderSpec, EventSchema
from connectors.feature_store.lineage import tag_lineage
from connectors.kafka.partition_reader import RecordChunk
from jobs import demo_data
from model_formats import load_model
from operators import steps
from operators.steps import PREDICTION_FIELDS, MissingEntityPolicy, ModelSlot

SCHEMA = EventSchema()


@pytest.fixture(scope="module")
def enriched(stack):
    """A decoded and enriched micro-batch of the demo: 51 events, the last of an entity without
    features (dead-lettered unknown_entity before any model sees it)."""
    values = [demo_data.encode(e) for e in demo_data.events(51, stack.entities, seed=61)]
    chunk = RecordChunk("in", 3, values, list(range(100, 100 + len(values))))
    batch = steps.decode(DecoderSpec(SCHEMA).build(), chunk)
    keys = steps.lookup_keys(batch, SCHEMA.key_field)
    names = stack.features.column_names[1:]
    features = pa.RecordBatch.from_arrays([stack.features.column(n).take(pa.array(keys)).combine_chunks()
                                           for n in names], names=names)
    found = np.ones(len(keys), dtype=bool)
    found[-1] = False
    features = pa.RecordBatch.from_arrays([pc.if_else(pa.array(found), c, pa.scalar(None, c.type))
                                           for c in features.columns], names=names)
    features = tag_lineage(features, "demo-features@4")       # as a store's answer names its snapshot
    return steps.join_features(batch, features, found, MissingEntityPolicy("dead_letter"))


@pytest.fixture(scope="module")
def models(stack, tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi")
    challenger = onnx_variant(stack.model_path, folder / "challenger.onnx", name="fraud-challenger", version="7")
    return load_model(str(stack.model_path)), load_model(str(challenger))


def test_one_model_through_the_multi_model_core_gives_todays_output(enriched, models):
    primary, _ = models
    [alone] = steps.score_with_models(enriched, [ModelSlot(primary)], SCHEMA)
    today = steps.score_batch(enriched, primary, SCHEMA)
    assert alone.predictions.schema.names == list(PREDICTION_FIELDS)
    def rows(scored):
        return [{k: v for k, v in r.items() if k != "scored_ts"} for r in scored.predictions.to_pylist()]
    assert rows(alone) == rows(today) and len(rows(alone)) == 50
    assert alone.predictions.column("prediction_id").to_pylist() == [f"in/3/{o}" for o in range(100, 150)]
    assert alone.dead_letters == today.dead_letters and (alone.role, alone.model) == ("champion", primary.name)
    assert set(alone.predictions.column("role").to_pylist()) == {"champion"}
    assert set(alone.predictions.column("features").to_pylist()) == {"demo-features@4"}


def test_each_model_tagged_and_prediction_ids_unique_per_record_and_model(enriched, models):
    primary, challenger = models
    ours, theirs = steps.score_with_models(enriched, [ModelSlot(primary), ModelSlot(challenger, "challenger")], SCHEMA)
    assert (theirs.model, theirs.model_version, theirs.role) == ("fraud-challenger", "7", "challenger")
    assert theirs.predictions.column("role").to_pylist() == ["challenger"] * 50
    assert theirs.predictions.column("features").to_pylist() == ["demo-features@4"] * 50
    assert set(theirs.predictions.column("model").to_pylist()) == {"fraud-challenger"}
    ids = ours.predictions.column("prediction_id").to_pylist() + theirs.predictions.column("prediction_id").to_pylist()
    assert len(ids) == len(set(ids)) == 100
    assert theirs.predictions.column("prediction_id")[0].as_py() == "in/3/100/fraud-challenger@7"
    # the same trees: the same scores, row for row
    assert ours.predictions.column("score").equals(theirs.predictions.column("score"))
    # the unknown entity is a dead letter of the batch, the same in each model's result
    assert [(d.reason, d.offset) for d in ours.dead_letters] == [(d.reason, d.offset) for d in theirs.dead_letters] \
        == [("unknown_entity", 150)]


def test_model_names_must_differ_and_one_model_is_champion(enriched, models):
    primary, challenger = models
    with pytest.raises(ValueError, match="distinct names"):
        steps.score_with_models(enriched, [ModelSlot(primary), ModelSlot(primary, "shadow")], SCHEMA)
    with pytest.raises(ValueError, match="only it"):
        steps.score_with_models(enriched, [ModelSlot(challenger, "challenger")], SCHEMA)
    with pytest.raises(ValueError, match="only it"):
        steps.score_with_models(enriched, [ModelSlot(primary), ModelSlot(challenger)], SCHEMA)

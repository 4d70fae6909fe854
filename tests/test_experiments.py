"""Live-experiment building blocks (operators/experiments.py): canary assignment, routes, and the
champion/challenger comparison, checked on real numbers."""
from __future__ import annotations

import doctest
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from operators import experiments as X

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_module_docstring_examples_run():
    failures, _ = doctest.testmod(X)
    assert failures == 0


@pytest.mark.parametrize("share", [0.01, 0.10, 0.50])
def test_canary_serves_its_share_of_100k_distinct_entities_within_one_point(share):
    served = X.canary_mask(np.arange(100_000), salt="fraud/production", share=share)
    assert abs(served.mean() - share) <= 0.01, served.mean()


def test_canary_assignment_is_the_same_in_another_process_with_another_hash_seed():
    keys = list(range(0, 5000, 7)) + ["c-17", "c-99"]
    here = X.entity_buckets(keys, "fraud/production").tolist()
    code = ("import json,sys; from operators.experiments import entity_buckets; "
            f"print(json.dumps(entity_buckets(json.loads(sys.argv[1]), 'fraud/production').tolist()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(keys)], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    assert json.loads(done.stdout) == here


def test_raising_the_share_keeps_every_entity_already_served_and_salts_are_independent():
    keys = np.arange(50_000)
    small = X.canary_mask(keys, "fraud/production", 0.05)
    large = X.canary_mask(keys, "fraud/production", 0.20)
    assert (large[small]).all()
    other = X.canary_mask(keys, "churn/production", 0.20)
    overlap = (large & other).mean()
    assert abs(overlap - 0.04) < 0.01, overlap           # independent: 0.2 × 0.2


def test_a_key_is_the_same_entity_as_int_numpy_int_float_string_and_arrow():
    salt = "s"
    reference = X.entity_buckets([42], salt)[0]
    for key in (np.int64(42), 42.0, "42"):
        assert X.entity_buckets([key], salt)[0] == reference, key
    assert X.entity_buckets(pa.array([42, 43]), salt)[0] == reference


def test_canary_share_out_of_range_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        X.canary_mask([1], "s", 1.5)
    assert not X.canary_mask([1, 2, 3], "s", 0.0).any()


EVENTS = pa.RecordBatch.from_pydict({
    "country": ["FR", "DE", "US", None, "FR", "BR"],
    "amount": [5.0, 150.0, 1000.0, 20.0, None, 99.99],
    "text": ["refund please", "hello", "REFUND", "x", "card lost", None],
})


def test_each_condition_kind_matches_exactly_its_rows_and_nulls_match_nothing():
    c = X.Condition
    assert c("country", "equals", "FR").matches(EVENTS).tolist() == [True, False, False, False, True, False]
    assert c("country", "in", ["DE", "US"]).matches(EVENTS).tolist() == [False, True, True, False, False, False]
    assert c("amount", "range", [10, 100]).matches(EVENTS).tolist() == [False, False, False, True, False, True]
    assert c("amount", "range", [100, None]).matches(EVENTS).tolist() == [False, True, True, False, False, False]
    assert c("text", "regex", "(?i)refund").matches(EVENTS).tolist() == [True, False, True, False, False, False]


def test_routes_first_match_wins_default_last_and_unmatched_rows_have_no_route():
    fr = X.Route("france", ("fr-model",), (X.Condition("country", "equals", "FR"),))
    big = X.Route("big", ("gbm", "forest"), (X.Condition("amount", "range", [100, None]),), combine="max")
    chosen = X.assign_routes(EVENTS, [fr, big])
    assert chosen.tolist() == [0, 1, 1, X.NO_ROUTE, 0, X.NO_ROUTE]
    with_default = X.assign_routes(EVENTS, [fr, big, X.Route("default", ("gbm",))])
    assert with_default.tolist() == [0, 1, 1, 2, 0, 2]
    both = X.Route("fr-and-big", ("m",), (X.Condition("country", "equals", "FR"),
                                          X.Condition("amount", "range", [1, 10])))
    assert X.assign_routes(EVENTS, [both]).tolist() == [0, -1, -1, -1, -1, -1]


def test_bad_routes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs a list"):
        X.Condition("country", "in", "FR")
    with pytest.raises(ValueError, match="low, high"):
        X.Condition("amount", "range", [1])
    with pytest.raises(ValueError, match="names no model"):
        X.Route("empty", ())
    with pytest.raises(KeyError, match="no such field"):
        X.Condition("colour", "equals", "red").matches(EVENTS)


def test_combine_rules():
    scores = np.array([[0.2, 0.9, 0.6], [0.1, 0.2, 0.3]])
    assert np.allclose(X.combine_scores(scores, "mean"), [1.7 / 3, 0.2])
    assert np.allclose(X.combine_scores(scores, "max"), [0.9, 0.3])
    assert np.allclose(X.combine_scores(scores, "vote"), [2 / 3, 0.0])


def test_psi_is_zero_for_the_same_distribution_and_matches_the_formula_otherwise():
    assert X.population_stability_index([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)
    e, a = np.array([0.5, 0.5]), np.array([0.8, 0.2])
    expected = float(np.sum((a - e) * np.log(a / e)))
    assert X.population_stability_index([50, 50], [80, 20]) == pytest.approx(expected)
    assert math.isfinite(X.population_stability_index([100, 0], [0, 100]))      # empty bins stay finite
    assert math.isnan(X.population_stability_index([0, 0], [1, 1]))


def test_window_comparison_counts_agreement_flips_differences_and_histograms():
    w = X.WindowComparison("fraud@1", "fraud@2", window_start_ms=0)
    w.add([0.1, 0.9, 0.6, 0.4], ["0", "1", "1", "0"], [0.2, 0.8, 0.3, 0.45], ["0", "1", "0", "0"], 1.0, 3.0)
    w.add([0.05], [0], [0.05], [0], 2.0, 4.0)
    s = w.summary()
    assert s["compared"] == 5 and s["agreement"] == pytest.approx(4 / 5)
    assert {(f["champion"], f["challenger"]): f["count"] for f in s["flips"]} == {("0", "0"): 3, ("1", "1"): 1,
                                                                                ("1", "0"): 1}
    diffs = np.array([0.1, 0.1, 0.3, 0.05, 0.0])
    assert s["score_diff_mean"] == pytest.approx(diffs.mean())
    assert s["score_diff_p99"] == pytest.approx(np.percentile(diffs, 99))
    assert sum(s["champion_hist"]) == sum(s["challenger_hist"]) == 5
    assert s["psi"] > 0
    assert s["champion_batch_ms_p50"] == pytest.approx(1.5) and s["challenger_batch_ms_p50"] == pytest.approx(3.5)
    json.dumps(s)                                           # the comparison topic's value is JSON


def test_window_comparison_refuses_results_that_are_not_row_aligned():
    with pytest.raises(ValueError, match="row-aligned"):
        X.WindowComparison("a@1", "b@1", 0).add([0.1, 0.2], ["0", "0"], [0.1], ["0"])

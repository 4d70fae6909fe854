"""``streamscore demo --experiment`` end to end, small (issue #14): the demo's events have a text
field ``channel`` and the job two routes on it (``card``: the followed champion with a shadow and a
10 % canary; ``web``: the mean of two model files). Its very last line is one JSON object whose
accounting is exact (every event predicted or dead-lettered, each bad event dead-lettered) and whose
``per_route`` counts exactly the events of each route; its HTML report opens in headless Chromium
with no console errors, the four titled figures and a non-blank screenshot."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from browser_fixtures import check_report_page, chromium  # noqa: F401 (chromium: a fixture)
from console import streamscore
from jobs.demo import DemoOptions, demo_records_with_reasons

pytestmark = pytest.mark.slow

N_EVENTS = 1500


def test_demo_experiment_routes_challengers_and_report(tmp_path, chromium):
    html = tmp_path / "report.html"
    result = streamscore("demo", "--experiment", "--events", str(N_EVENTS), "--rate", "1000",
                         "--workdir", str(tmp_path / "demo"), "--html", str(html), cwd=tmp_path, timeout=900,
                         env={"COLUMNS": "200"})        # rich's tables unwrapped
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    last = json.loads(result.stdout.strip().splitlines()[-1])
    records, reasons = demo_records_with_reasons(DemoOptions(events=N_EVENTS, experiment=True))
    assert last["events_in"] == N_EVENTS
    assert last["dead_letters"] == len(reasons) > 0
    assert last["predictions_out"] == N_EVENTS - len(reasons)
    channels = Counter(r["channel"] for r in records if isinstance(r, dict))
    assert last["per_route"] == {"card": channels["pos"] + channels["app"], "web": channels["web"]}
    assert last["shadow_compared"] > 0 and 0.5 <= last["agreement"] <= 1.0
    assert 0 < last["canary_share_observed"] < 0.3          # of the card route's events; target 0.1
    assert "predictions per route" in result.stdout
    assert "challengers against the champion" in result.stdout          # the comparison table
    check_report_page(chromium, html)
    print(f"\n{result.stdout.strip().splitlines()[-1]}")

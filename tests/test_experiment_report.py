"""The champion/challenger HTML report, opened in a real headless Chromium (Debian packages
``chromium`` and ``chromium-driver``): it loads with no console errors, fetches nothing, shows its
four figures with their titles, and its screenshot is not blank."""
from __future__ import annotations

import numpy as np
import pytest

from browser_fixtures import REPORT_FIGURES as FIGURES
from browser_fixtures import check_report_page, chromium  # noqa: F401 (chromium: a fixture)
from jobs.experiment_report import merge_windows, render_html
from operators.experiments import WindowComparison


def windows(n: int = 12, seed: int = 3) -> list[dict]:
    """Windows of a real comparison: a challenger close to the champion, drifting a little."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w = WindowComparison("fraud@1", "fraud@2", window_start_ms=1_700_000_000_000 + 10_000 * i)
        champion = rng.beta(2, 5, 2000)
        challenger = np.clip(champion + rng.normal(0.01 * i, 0.05, 2000), 0, 1)
        w.add(champion, (champion >= 0.5).astype(int), challenger, (challenger >= 0.5).astype(int),
              champion_ms=float(rng.uniform(1, 2)), challenger_ms=float(rng.uniform(2, 4)))
        out.append(w.summary())
    return out


def test_merged_windows_add_up():
    ws = windows()
    total = merge_windows(ws)
    assert total["compared"] == sum(w["compared"] for w in ws) == 24_000
    assert sum(f["count"] for f in total["flips"]) == 24_000
    assert sum(total["champion_hist"]) == sum(total["challenger_hist"]) == 24_000
    assert 0 < total["agreement"] < 1 and total["psi"] > 0
    with pytest.raises(ValueError, match="no comparison windows"):
        merge_windows([])


def test_page_is_self_contained():
    page = render_html(windows(), "fraud in production")
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    for title in FIGURES:
        assert title in page


def test_report_renders_in_headless_chromium_without_errors(chromium, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "report.html"
    path.write_text(render_html(windows(), "fraud in production"))
    check_report_page(chromium, path, FIGURES)
    # the plots drew something: bars in the histogram, a line of 12 points, 4 matrix cells
    assert len(chromium.find_elements(By.CSS_SELECTOR, "figure:nth-of-type(1) circle")) == 12
    assert len(chromium.find_elements(By.CSS_SELECTOR, "figure:nth-of-type(3) rect")) == 1 + 4

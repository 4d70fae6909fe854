"""The champion/challenger HTML report, opened in a real headless Chromium (Debian packages
``chromium`` and ``chromium-driver``): it loads with no console errors, fetches nothing, shows its
four figures with their titles, and its screenshot is not blank."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from jobs.experiment_report import merge_windows, render_html
from operators.experiments import WindowComparison

FIGURES = ["Agreement over time", "Score distributions", "Flip matrix", "Latency per model"]


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


@pytest.fixture(scope="module")
def chromium():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        from feature_store_fixtures import service_missing
        service_missing("headless Chromium not installed (make services, or apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def test_report_renders_in_headless_chromium_without_errors(chromium, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    path = tmp_path / "report.html"
    path.write_text(render_html(windows(), "fraud in production"))
    chromium.get(path.as_uri())
    errors = [e for e in chromium.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    captions = [c.text for c in chromium.find_elements(By.TAG_NAME, "figcaption")]
    assert captions == FIGURES
    svgs = chromium.find_elements(By.CSS_SELECTOR, "figure svg")
    assert len(svgs) == 4 and all(s.size["width"] > 100 and s.size["height"] > 100 for s in svgs)
    # the plots drew something: bars in the histogram, a line of 12 points, 4 matrix cells
    assert len(chromium.find_elements(By.CSS_SELECTOR, "figure:nth-of-type(1) circle")) == 12
    assert len(chromium.find_elements(By.CSS_SELECTOR, "figure:nth-of-type(3) rect")) == 1 + 4
    shot = Image.open(io.BytesIO(chromium.get_screenshot_as_png())).convert("L")
    colours = shot.getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 20, "the screenshot is blank or nearly so"
    dark = sum(count for count, level in colours if level < 200)
    assert dark > 0.01 * shot.width * shot.height, "hardly anything drawn on the page"

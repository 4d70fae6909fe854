"""A real headless Chromium (Debian packages ``chromium`` and ``chromium-driver``) for the HTML
reports, and the checks every report page must pass: it loads with no console errors, shows its
figures with their titles, each plot has a size, and its screenshot is not blank."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

REPORT_FIGURES = ["Agreement over time", "Score distributions", "Flip matrix", "Latency per model"]


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


def check_report_page(driver, path: Path, figures: list[str] = REPORT_FIGURES) -> None:
    """Open the report at ``path`` and check it: no console errors, exactly ``figures`` as the
    figure captions in order, one plot (an SVG larger than 100 × 100 px) per figure, and a
    screenshot with more than 20 grey levels and at least 1 % of it drawn."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver.get(Path(path).resolve().as_uri())
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    captions = [c.text for c in driver.find_elements(By.TAG_NAME, "figcaption")]
    assert captions == figures
    svgs = driver.find_elements(By.CSS_SELECTOR, "figure svg")
    assert len(svgs) == len(figures) and all(s.size["width"] > 100 and s.size["height"] > 100 for s in svgs)
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
    colours = shot.getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 20, "the screenshot is blank or nearly so"
    dark = sum(count for count, level in colours if level < 200)
    assert dark > 0.01 * shot.width * shot.height, "hardly anything drawn on the page"

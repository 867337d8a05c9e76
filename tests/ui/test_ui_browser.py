"""The job page in real headless Chromium: log in through the form, then every pair's base,
reference with its mask overlaid, and target must have loaded; a screenshot is saved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devstack.harness import TINY_JOB

pytestmark = pytest.mark.integration

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).exists()), None)
CHROMEDRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "") if p and Path(p).exists()),
                    None)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium/chromedriver (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


_IMAGES_LOADED = """return Array.from(document.querySelectorAll('tr.pair img')).map(
  i => [i.alt, i.complete && i.naturalWidth > 0, i.getAttribute('src')]);"""


def test_job_page_in_chromium_shows_pair_triplets_with_masks(stack, tiny_job, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{stack.api}/jobs/{tiny_job.id}")
    assert "/login" in browser.current_url  # no cookie yet
    browser.find_element(By.ID, "token").send_keys(stack.token)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(f"/jobs/{tiny_job.id}"))
    WebDriverWait(browser, 30).until(lambda d: all(ok for _, ok, _ in d.execute_script(_IMAGES_LOADED)))

    images = browser.execute_script(_IMAGES_LOADED)
    alts = [alt for alt, _, _ in images]
    n = len(tiny_job.pairs)
    assert n > 0 and len(browser.find_elements(By.CSS_SELECTOR, "tr.pair")) == n
    assert [alts.count(a) for a in ("base", "reference", "item mask", "target")] == [n, n, n, n]
    tints = browser.find_elements(By.CSS_SELECTOR, "tr.pair .stack .tint")  # the mask over the reference
    assert len(tints) == n and {t.value_of_css_property("position") for t in tints} == {"absolute"}
    assert all("mask.png" in t.value_of_css_property("mask-image") for t in tints)
    assert browser.find_element(By.ID, "status").text == "succeeded"
    assert browser.find_element(By.ID, "progress-pairs").get_attribute("value") == str(n)
    epochs = tiny_job.job["spec"]["epochs"]
    # the Vega-Lite charts, drawn by the vendored scripts once the page has loaded
    charts = len(browser.find_elements(By.CSS_SELECTOR, "script[data-chart]"))
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".vega svg[aria-label]")) == charts)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg[aria-label^='sample scores']")) == epochs  # one per epoch
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg[aria-label$='per policy version']")) == 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg[aria-label='fusion gain per epoch']")) == 1
    legend = browser.find_element(By.ID, "chart-heldout").text
    assert "untrained (adapters off)" in legend and "trained" in legend  # base vs trained on one chart

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 40, 6000))
    shot = tmp_path / "job_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"\njob page screenshot: {shot}")

    browser.get(f"{stack.api}/")  # the cookie carries over: the jobs list
    assert tiny_job.id[:12] in browser.find_element(By.ID, "jobs").text


_COMPARE_IMAGES = """return Array.from(document.querySelectorAll('tr.compare-row img')).map(
  i => [i.className, i.complete && i.naturalWidth > 0]);"""


def test_compare_page_in_chromium_shows_base_beside_trained(stack, tiny_job, browser, tmp_path):
    """From the job page to its compare page: submit the form, wait for the worker, and every seed's
    base and trained image and item mask must have loaded beside their scores."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{stack.api}/login?next=/jobs/{tiny_job.id}")
    browser.find_element(By.ID, "token").send_keys(stack.token)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(f"/jobs/{tiny_job.id}"))
    browser.find_element(By.ID, "compare").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(f"/jobs/{tiny_job.id}/compare"))
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == tiny_job.job["spec"]["prompts"][0]
    assert browser.find_element(By.ID, "version").get_attribute("value") == "2"  # the latest by default
    seeds = browser.find_element(By.ID, "seeds")
    seeds.clear()
    seeds.send_keys("2")
    browser.find_element(By.ID, "compare-submit").click()
    WebDriverWait(browser, 300).until(lambda d: d.find_element(By.ID, "compare-status").text == "succeeded")
    WebDriverWait(browser, 30).until(lambda d: all(ok for _, ok in d.execute_script(_COMPARE_IMAGES)))

    rows = browser.find_elements(By.CSS_SELECTOR, "tr.compare-row")
    assert [r.get_attribute("data-seed") for r in rows] == ["0", "1"]
    kinds = [cls for cls, _ in browser.execute_script(_COMPARE_IMAGES)]
    items = len(TINY_JOB["prompts"][0]["items"])  # the form is pre-filled with the job's first prompt and items
    assert [kinds.count(k) for k in ("base", "trained", "mask")] == [2, 2, 2 * items]
    for cls in ("base-score", "trained-score"):
        assert all(float(e.text) == float(e.text) for e in browser.find_elements(By.CLASS_NAME, cls))
    assert browser.find_element(By.ID, "trained-mean").text not in ("", "–")

    shot = tmp_path / "compare_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5_000
    print(f"\ncompare page screenshot: {shot}")

"""The job page in real headless Chromium: log in through the form, then every pair's base,
reference with its mask overlaid, and target must have loaded; a screenshot is saved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg[aria-label^='sample scores']")) == epochs  # one per epoch
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg[aria-label$='per policy version']")) == 3

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 40, 6000))
    shot = tmp_path / "job_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"\njob page screenshot: {shot}")

    browser.get(f"{stack.api}/")  # the cookie carries over: the jobs list
    assert tiny_job.id[:12] in browser.find_element(By.ID, "jobs").text

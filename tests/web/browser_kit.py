"""Headless Debian Chromium driven by Selenium against a live API, for the dashboard tests.

With CI=true a missing chromium or chromedriver FAILS the tests (the project's rule for missing
services); elsewhere they are skipped. ``DFMSCD_SCREENSHOTS=docs/dashboard`` makes ``shoot``
write each page at 1280 and 390 px wide (small palette PNGs); without it ``shoot`` only checks
that the page has no horizontal overflow at both widths.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("DFMSCD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DFMSCD_CHROMEDRIVER", "/usr/bin/chromedriver")
WIDTHS = (1280, 390)
TIMEOUT = 30


def _require(path: str, what: str) -> None:
    if Path(path).exists() or shutil.which(path):
        return
    msg = f"{what} not found at {path} (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


class Dashboard:
    """The browser on the dashboard: navigation, waits, screenshots and downloads."""

    def __init__(self, driver: Any, url: str, downloads: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url, self.downloads = driver, url, downloads
        self.wait = WebDriverWait(driver, TIMEOUT, poll_frequency=0.1)
        shots = os.environ.get("DFMSCD_SCREENSHOTS")
        self.shots = Path(shots) if shots else None

    # -- navigation
    def open(self, hash_: str = "") -> None:
        self.driver.get(f"{self.url}/{hash_}")

    def go(self, hash_: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", hash_)

    def sign_in(self, key: str) -> None:
        self.open()
        self.driver.execute_script("sessionStorage.clear()")
        self.open("#/jobs")
        self.fill("#api-key", key)
        self.click("#sign-in")
        self.visible("#nav")

    # -- DOM
    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def visible(self, selector: str, timeout: float = TIMEOUT) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, selector)), f"{selector} never became visible")

    def until(self, predicate: Any, what: str, timeout: float = TIMEOUT) -> Any:
        """Wait for ``predicate()``; elements it reads may be replaced while the page re-renders (a
        job page polls), so a stale element is one more try, never a failure."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda _d: predicate(), what)

    def fill(self, selector: str, text: str) -> None:
        el = self.visible(selector)
        el.clear()
        el.send_keys(text)

    def select(self, selector: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        self.until(lambda: any(o.get_attribute("value") == value for o in Select(self.css(selector)).options),
                   f"option {value!r} in {selector}")
        Select(self.css(selector)).select_by_value(value)

    def click(self, selector: str) -> None:
        el = self.visible(selector)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        el.click()

    def console_errors(self) -> list[str]:
        """Severe console entries other than failed requests (a 401/404 the page shows on purpose)."""
        entries = self.driver.get_log("browser")
        return [e["message"] for e in entries
                if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]

    # -- widths and screenshots
    def shoot(self, name: str) -> None:
        """At each width: no horizontal overflow; with DFMSCD_SCREENSHOTS, a full-page PNG."""
        for width in WIDTHS:
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600})
            self.driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            overflow = self.driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name}: the page is {overflow}px wider than a {width}px screen"
            if self.shots is not None:
                height = min(2400, self.driver.execute_script("return document.documentElement.scrollHeight"))
                self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
                self.driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                _save_small_png(self.driver.get_screenshot_as_png(), self.shots / f"{name}-{width}.png")
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def downloaded(self, filename: str) -> Path:
        """The file once Chrome has finished writing it into the download folder."""
        path = self.downloads / filename
        self.until(lambda: path.exists() and not (self.downloads / f"{filename}.crdownload").exists()
                   and path.stat().st_size > 0, f"download of {filename}", timeout=60)
        return path


def _save_small_png(png: bytes, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """(WebDriver, download folder): one headless Chromium for the session."""
    _require(CHROMIUM, "chromium")
    _require(CHROMEDRIVER, "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run", "--lang=en-GB"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "safebrowsing.enabled": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver, downloads
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def dashboard(browser: tuple[Any, Path], client: Any, celery_worker: Any) -> Iterator[Dashboard]:
    """The browser and a live uvicorn (with a real Celery worker behind it)."""
    from hardening_kit import live_server

    driver, downloads = browser
    with live_server() as url:
        yield Dashboard(driver, url, downloads)

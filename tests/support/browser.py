"""Debian's headless Chromium driven by Selenium through Debian's chromedriver; nothing is downloaded at run time
(the driver and browser paths are given, Selenium Manager is kept offline)."""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_available() -> bool:
    """Debian's chromium and chromium-driver are installed (``.ci/system-deps.sh``)."""
    return all(shutil.which(p) is not None for p in (CHROMIUM, CHROMEDRIVER))


@contextlib.contextmanager
def headless_chromium(page_load_timeout_s: float = 20.0) -> Iterator:
    """A Selenium ``WebDriver`` on a fresh headless Chromium; quit on exit."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(page_load_timeout_s)
        yield driver
    finally:
        driver.quit()


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1):
    """``predicate()``'s first truthy value within ``timeout_s``; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)

"""Driving the dashboard in the browser: log in, read and click what the live refresh
may swap out, wait, and keep screenshots.

Screenshots go to ``$HPCAF_SCREENSHOTS``: a folder under pytest's basetemp in a
test run (the ``screenshots`` fixture of conftest.py), so the suite leaves the
tracked docs/screenshots/ as it found them; ``make screenshots`` points it at
docs/screenshots/ to refresh the documentation's pictures.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import Harvester

SCREENSHOTS_VARIABLE = "HPCAF_SCREENSHOTS"


def screenshots_dir() -> Path:
    """``$HPCAF_SCREENSHOTS``, else a folder in the system's temporary directory
    (never the tracked docs/screenshots/)."""
    configured = os.environ.get(SCREENSHOTS_VARIABLE)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "hpcaf-screenshots"


def shot(browser: Any, name: str) -> None:
    folder = screenshots_dir()
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"{name}.png"))


def login(browser: Any, h: Harvester, user: str) -> None:
    browser.delete_all_cookies()
    browser.get(h.url + "/")
    assert browser.current_url.endswith("/login"), "no cookie: the login form"
    browser.find_element(By.ID, "token").send_keys(h.tokens[user])
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.ID, "tasks"))


def text(browser: Any, element_id: str) -> str:
    """An element's text; the live refresh may swap it out between lookup and read."""
    for _ in range(5):
        try:
            return str(browser.find_element(By.ID, element_id).text)
        except StaleElementReferenceException:
            continue
    return str(browser.find_element(By.ID, element_id).text)


def click(browser: Any, element_id: str) -> None:
    """Click an element that the live refresh may replace at any moment."""
    for _ in range(5):
        try:
            browser.find_element(By.ID, element_id).click()
            return
        except StaleElementReferenceException:
            continue
    browser.find_element(By.ID, element_id).click()


def wait(browser: Any, condition: Any, timeout: float = 60) -> Any:
    return WebDriverWait(
        browser,
        timeout,
        poll_frequency=0.3,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    ).until(condition)

"""Driving the dashboard in the browser: log in, read and click what the live refresh
may swap out, wait, and keep screenshots in docs/screenshots/."""

from __future__ import annotations

from typing import Any

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import REPO, Harvester

SCREENSHOTS = REPO / "docs" / "screenshots"


def shot(browser: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


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

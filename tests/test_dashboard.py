"""The dashboard in a real headless Chromium against a real harvester and real pilots.

Screenshots of each page go to a temporary folder; ``make screenshots`` runs these
tests with them going to docs/screenshots/ (they show in the diff when a page
changes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.common.by import By

from tests.browser import click, login, shot, text, wait
from tests.helpers import Harvester

pytestmark = pytest.mark.e2e


def test_login_live_progress_and_job_page(
    harvester: Harvester, browser: Any, tmp_path: Path
) -> None:
    browser.delete_all_cookies()
    browser.get(harvester.url + "/login")
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "login").click()
    wait(browser, lambda b: "invalid or revoked token" in text(b, "login-error"), timeout=10)
    browser.find_element(By.ID, "token").send_keys(harvester.tokens["pilot"])
    browser.find_element(By.ID, "login").click()
    # the first refusal stays on screen until the second answer has loaded
    wait(
        browser,
        lambda b: "pilot token cannot use the dashboard" in text(b, "login-error"),
        timeout=10,
    )

    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 2; echo hello from job $HPCAF_JOB_INDEX",
        "--outDS",
        "user.alice.live",
        "--nJobs",
        "4",
        "--taskName",
        "live progress",
    )
    login(browser, harvester, "alice")
    assert browser.find_element(By.ID, f"task-{task_id}"), "the new task is listed"
    shot(browser, "tasks")

    browser.get(f"{harvester.url}/tasks/{task_id}")
    browser.execute_script("window.notReloaded = true;")
    first = text(browser, "progress")
    wait(browser, lambda b: text(b, "progress") != first, 90)
    assert browser.execute_script("return window.notReloaded === true;"), "updated in place"
    wait(browser, lambda b: text(b, "task-status") == "done", 120)
    assert text(browser, "progress") == "100%"
    assert not browser.find_elements(By.ID, "kill"), "nothing to kill once it is done"
    shot(browser, "task")

    job_link = browser.find_element(By.CSS_SELECTOR, "#jobs tbody tr td a")
    job_id = job_link.text
    job_link.click()
    wait(browser, lambda b: b.find_elements(By.ID, "log"))
    assert "hello from job" in text(browser, "log")
    history = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#history td:nth-child(3)")]
    assert history == ["defined", "activated", "sent", "starting", "running", "finished"]
    assert text(browser, "batch-id") not in ("", "-"), "the worker's batch id is shown"
    assert browser.current_url.endswith(f"/jobs/{job_id}")
    shot(browser, "job")

    browser.get(harvester.url + "/queues")
    row = browser.find_element(By.XPATH, "//table[@id='queues']//td[text()='ANALY_LOCAL']/..")
    assert "online" in row.text
    assert browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr"), "recent workers listed"
    shot(browser, "queues")


def test_kill_as_owner_refused_as_another_user(harvester: Harvester, browser: Any) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 120",
        "--outDS",
        "user.alice.long",
        "--nJobs",
        "2",
    )
    login(browser, harvester, "bob")
    browser.get(f"{harvester.url}/tasks/{task_id}")
    with pytest.raises(NoSuchElementException):
        browser.find_element(By.ID, "kill")
    # bob forges the form with his own valid CSRF token: the service refuses him
    csrf = browser.find_element(By.NAME, "csrf").get_attribute("value")
    status = browser.execute_script(
        "const f = new FormData(); f.append('csrf', arguments[1]);"
        "return fetch(arguments[0], {method: 'POST', body: f}).then(r => r.status);",
        f"/tasks/{task_id}/kill",
        csrf,
    )
    assert status == 403
    # and a form without the CSRF token is refused for anyone, the owner included
    login(browser, harvester, "alice")
    status = browser.execute_script(
        "return fetch(arguments[0], {method: 'POST', body: new FormData()}).then(r => r.status);",
        f"/tasks/{task_id}/kill",
    )
    assert status == 403
    assert harvester.task(task_id)["status"] not in ("aborted",)

    browser.get(f"{harvester.url}/tasks/{task_id}")
    click(browser, "kill")
    wait(browser, lambda b: text(b, "task-status") == "aborted", 30)
    assert harvester.task(task_id)["status"] == "aborted"
    with pytest.raises(NoSuchElementException):
        browser.find_element(By.ID, "kill")
    assert browser.find_element(By.ID, "retry"), "an aborted task can be retried"


def test_everything_shown_is_escaped(harvester: Harvester, browser: Any) -> None:
    name = '<script>window.pwned = 1</script><b id="injected">bold</b>'
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.xss",
        "--taskName",
        name,
    )
    login(browser, harvester, "alice")
    cell = browser.find_element(By.CSS_SELECTOR, f"#task-{task_id} td.name")
    assert cell.text == name, "shown as text"
    assert not browser.find_elements(By.ID, "injected")
    assert browser.execute_script("return window.pwned === undefined;")
    browser.get(f"{harvester.url}/tasks/{task_id}")
    assert text(browser, "task-name") == name
    assert not browser.find_elements(By.ID, "injected")


def test_scan_page_shows_the_best_points(harvester: Harvester, browser: Any) -> None:
    command = (
        "python3 -c 'import json, sys; x = float(sys.argv[1]); "
        'json.dump({"loss": (x - 2) ** 2}, open("metrics.json", "w"))\' %{x}'
    )
    result = harvester.cli(
        "harvester.client.phpo",
        "--containerImage",
        "base",
        "--exec",
        command,
        "--searchSpace",
        json.dumps({"x": [0, 1, 2, 3]}),
        "--algorithm",
        "grid",
        "--nParallelEvaluation",
        "2",
        "--outDS",
        "user.alice.scanpage",
    )
    assert result.returncode == 0, result.output
    task_id = int(result.stdout.split("jediTaskID=")[1].split()[0])
    assert harvester.wait_task(task_id, 180)["status"] == "done"
    login(browser, harvester, "alice")
    browser.get(f"{harvester.url}/tasks/{task_id}")
    rows = browser.find_elements(By.CSS_SELECTOR, "#best-points tbody tr")
    assert len(rows) == 4 and "x=2" in rows[0].text, "best first"
    assert text(browser, "best-metric") == "0"
    wait(
        browser,
        lambda b: b.execute_script(
            "const i = document.getElementById('plot'); return i.complete && i.naturalWidth > 0;"
        ),
    )
    shot(browser, "scan")

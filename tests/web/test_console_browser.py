"""The web console in a real browser: Debian's headless Chromium driven by Selenium 4,
against a real `gotask node` process serving `--http` with a token.

The tests write the screenshots docs/console.md shows (docs/images/console-*.png).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import gotask

from ..processes import ROOT, connect, free_port, start_node, stop
from .conftest import TOKEN

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (.ci/run installs)"),
]
IMAGES = ROOT / "docs" / "images"
PAYLOADS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)")
T = TypeVar("T")


class Node:
    """A `gotask node` process with its HTTP face and a client of it."""

    def __init__(self, http_port: int | None = None) -> None:
        self.port, self.http_port = free_port(), http_port or free_port()
        env = dict(os.environ, GOTASK_HTTP_TOKEN=TOKEN)
        self.proc: subprocess.Popen[bytes] = start_node(
            "tests.web.webapp", self.port, "--http", f"127.0.0.1:{self.http_port}",
            "--queues", "default:1,pq:1", env=env)
        self.client: gotask.Client = connect(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.http_port}"
        _until(lambda: httpx.get(self.url + "/readyz").status_code == 200)

    def stop(self) -> None:
        self.client.close()
        stop(self.proc)


def _until(check: Callable[[], T | None], timeout_s: float = 20.0) -> T:
    """Wait for `check` to return something truthy (it may raise meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = Node()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _log_in(browser: Any, node: Node) -> None:
    browser.get(node.url + "/console/")
    if "/login" in browser.current_url:
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
    _until(lambda: browser.find_element(By.TAG_NAME, "h1").text == "Overview")


def _live(browser: Any) -> bool:
    return bool(browser.find_element(By.ID, "live-status").text == "live")


def _click(browser: Any, css: str) -> None:
    """Click the element at `css`, finding it again if the page replaced it meanwhile."""
    _until(lambda: browser.find_element(By.CSS_SELECTOR, css).click() or True)


def _text(browser: Any, css: str) -> str:
    return str(_until(lambda: browser.find_element(By.CSS_SELECTOR, css).text))


def _no_alert(browser: Any) -> None:
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (reading it is the check)


def test_login_with_the_token_then_the_overview_is_live(browser: Any, node: Node) -> None:
    browser.delete_all_cookies()
    browser.get(node.url + "/console/")
    assert browser.current_url.endswith("/console/login")
    browser.find_element(By.ID, "token").send_keys("not-the-token-0123456789")
    browser.find_element(By.ID, "login").click()
    assert "not the token" in _text(browser, "#login-error")
    _log_in(browser, node)
    cookie = browser.get_cookie("gotask_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"] and TOKEN not in browser.page_source
    node.client.enqueue("add", 1, 2)
    _until(lambda: _live(browser))
    _until(lambda: int(browser.find_element(By.CSS_SELECTOR, '[data-total="succeeded"]').text))
    assert len(browser.find_elements(By.CSS_SELECTOR, ".uplot canvas")) == 2
    IMAGES.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(IMAGES / "console-overview.png"))


def test_a_running_jobs_progress_bar_advances(browser: Any, node: Node) -> None:
    _log_in(browser, node)
    job_id = node.client.enqueue("steps", 40, 0.1)
    browser.get(f"{node.url}/console/jobs/{job_id}")
    _until(lambda: _live(browser))

    def progress() -> float:
        return float(browser.find_element(By.ID, "job-progress").get_attribute("value"))

    first = _until(lambda: progress() > 0 and progress())
    _until(lambda: 1 > progress() > first)
    browser.save_screenshot(str(IMAGES / "console-job.png"))
    _until(lambda: browser.find_element(By.ID, "job-state").text == "succeeded")


def test_retry_a_dead_job_and_see_it_succeed(browser: Any, node: Node, tmp_path: Path) -> None:
    _log_in(browser, node)
    flag = tmp_path / "flag"
    job_id = node.client.enqueue("fails_unless", str(flag), "not yet")
    _until(lambda: node.client.get(job_id).state == "dead")
    browser.get(node.url + "/console/dlq")
    browser.find_element(By.LINK_TEXT, job_id).click()
    assert "not yet" in _text(browser, "#job-error")
    flag.touch()
    browser.find_element(By.ID, "retry-job").click()
    browser.switch_to.alert.accept()  # the confirmation
    _until(lambda: browser.find_element(By.ID, "job-state").text == "succeeded")
    assert "passed" in browser.find_element(By.ID, "job-result").text


def test_xss_payloads_in_args_and_errors_render_as_text(browser: Any, node: Node,
                                                        tmp_path: Path) -> None:
    _log_in(browser, node)
    job_id = node.client.enqueue("fails_unless", *PAYLOADS[:1], " ".join(PAYLOADS))
    echo_id = node.client.enqueue("echo", *PAYLOADS, link=PAYLOADS[2])
    _until(lambda: node.client.get(job_id).state == "dead")
    for page in (f"/console/jobs/{job_id}", f"/console/jobs/{echo_id}", "/console/dlq",
                 "/console/jobs"):
        browser.get(node.url + page)
        _no_alert(browser)
        assert browser.find_elements(By.CSS_SELECTOR, "img, main script") == []
        hrefs = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
        assert not any(h.startswith("javascript:") for h in hrefs)
    browser.get(f"{node.url}/console/jobs/{job_id}")
    _until(lambda: _live(browser))  # pushed records are rendered by the script: as text too
    assert browser.find_element(By.ID, "job-error").text == "ValueError: " + " ".join(PAYLOADS)
    _no_alert(browser)
    browser.get(f"{node.url}/console/jobs/{echo_id}")
    for payload in PAYLOADS:
        assert payload.replace('"', '\\"') in browser.find_element(By.ID, "job-args").text


def test_pause_and_resume_a_queue(browser: Any, node: Node) -> None:
    _log_in(browser, node)
    node.client.wait(node.client.enqueue("add", 1, 1, queue="pq"), timeout_s=20)
    row = 'tr[data-queue="pq"]'
    browser.get(node.url + "/console/queues")
    _click(browser, f"{row} button")
    assert "queue pq paused" in _text(browser, ".flash")
    assert _text(browser, f"{row} td.paused") == "paused"
    job_id = node.client.enqueue("add", 5, 6, queue="pq")
    browser.get(f"{node.url}/console/jobs/{job_id}")
    assert browser.find_element(By.ID, "job-state").text == "queued"
    browser.get(node.url + "/console/queues")
    _until(lambda: _text(browser, f'{row} [data-state="queued"]') == "1")
    assert node.client.get(job_id).state == "queued"  # paused: it did not start meanwhile
    assert _text(browser, f"{row} button") == "Resume"
    _click(browser, f"{row} button")
    assert "queue pq resumed" in _text(browser, ".flash")
    assert node.client.wait(job_id, timeout_s=20) == 11
    _until(lambda: _text(browser, f'{row} [data-state="succeeded"]') == "2")


def test_a_post_without_the_csrf_token_is_refused(browser: Any, node: Node) -> None:
    _log_in(browser, node)
    browser.get(node.url + "/console/dlq")
    post = """
        const [csrf, done] = [arguments[0], arguments[arguments.length - 1]];
        const body = new URLSearchParams(csrf ? {csrf: csrf} : {});
        fetch("/console/dlq/retry", {method: "POST", body: body}).then(r => done(r.status));
    """
    assert browser.execute_async_script(post, "") == 403
    assert browser.execute_async_script(post, "wrong") == 403
    token = browser.find_element(By.CSS_SELECTOR, 'input[name="csrf"]').get_attribute("value")
    assert browser.execute_async_script(post, token) == 200  # redirected to the DLQ page


def test_the_page_reconnects_after_a_node_restart(browser: Any) -> None:
    first = Node()
    try:
        _log_in(browser, first)
        _until(lambda: _live(browser))
        first.stop()
        _until(lambda: browser.find_element(By.ID, "live-status").text == "reconnecting…")
        second = Node(first.http_port)
        try:
            _until(lambda: _live(browser))
            second.client.enqueue("add", 2, 3)
            _until(lambda: browser.find_element(
                By.CSS_SELECTOR, '[data-total="succeeded"]').text == "1")
        finally:
            second.stop()
    finally:
        first.stop()

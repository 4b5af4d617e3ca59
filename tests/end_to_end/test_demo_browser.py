"""A real browser (headless Chromium through Selenium) in admin: an operator sees a breaker open after
failures against a failing local server, forces it closed and sees the change; a staff user without
the permission gets no actions.

The calls are made in this test process, whose publisher thread publishes its breaker; the admin is
served by pytest-django's ``live_server`` (a thread of this process). Needs Debian's ``chromium`` and
``chromium-driver``: skipped without them, failed with ``CI=true``.
"""

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import override_settings

from django_aio_request import breaker_publisher, clients, get
from django_aio_request.breaker.circuit_breaker import CircuitState, DefaultCircuitBreaker
from django_aio_request.breaker_publisher import Publisher
from tests.support.loopback import LoopbackServer

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = os.environ.get("AIO_REQUEST_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AIO_REQUEST_TEST_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
BREAKER = {"BREAK_DURATION": 60, "SAMPLING_DURATION": 30, "MINIMUM_THROUGHPUT": 2, "FAILURE_THRESHOLD": 0.5}
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


def missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: install Debian's {package} (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator["WebDriver"]:
    reason = missing()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and no browser for the admin test: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="aio-request-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def fast_publisher(monkeypatch: pytest.MonkeyPatch) -> Iterator[Publisher]:
    # Rounds are run by the test between page loads (run_once), never by the thread: the test
    # database is SQLite in shared-cache memory, where a write from another thread while the live
    # server answers fails at once ("table is locked") instead of waiting as a real database would.
    made = Publisher(interval=3600)
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    yield made
    made.stop()


def staff(username: str, *codenames: str) -> None:
    user = User.objects.create_user(username, password="secret-pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_aio_request", codename__in=codenames)
    )


def log_in(driver: "WebDriver", base: str, username: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.delete_all_cookies()
    driver.get(f"{base}/admin/login/?next=/admin/django_aio_request/breakerstatus/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys("secret-pw")
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # click() can return before the next page has loaded: wait for it rather than read the old title.
    WebDriverWait(driver, 10).until(
        lambda d: "circuit breaker" in d.title.lower(), f"no circuit breaker list after logging in as {username}"
    )


def until(
    driver: "WebDriver", check: Callable[[], Any], what: str, publish: Callable[[], Any], timeout: float = 10.0
) -> None:
    """Publish a round and reload the page until ``check()`` holds: the admin page has no live updates.
    (The 5 s promise is checked by test_breaker_publisher with the real thread, without a browser.)"""
    end = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what}\n{driver.page_source[:3000]}")
        publish()
        time.sleep(0.1)
        driver.refresh()


def state_of(driver: "WebDriver", client: str) -> str | None:
    from selenium.webdriver.common.by import By

    for row in driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"):
        if row.find_element(By.CSS_SELECTOR, ".field-client").text == client:
            return str(row.find_element(By.CSS_SELECTOR, ".field-state_display").text)
    return None


@pytest.mark.django_db(transaction=True)
def test_an_operator_sees_a_breaker_open_and_forces_it_closed(
    browser: "WebDriver", live_server: Any, server: LoopbackServer, fast_publisher: Publisher
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server.route("/down", lambda h: h.reply(500))
    staff("operator", "view_breakerstatus", "override_circuit_breaker")
    staff("viewer", "view_breakerstatus")
    billing = {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
    with override_settings(AIO_REQUEST={"SERVICE_NAME": "orders", "CLIENTS": {"billing": billing}}):
        breaker = clients["billing"].circuit_breaker
        assert isinstance(breaker, DefaultCircuitBreaker)
        statuses = []
        for _ in range(3):
            with clients["billing"].request(get("down")) as response:
                statuses.append(response.status)
        assert statuses == [500, 500, 502]  # open: the third call never reached the server

        fast_publisher.run_once()
        log_in(browser, live_server.url, "operator")
        until(
            browser,
            lambda: state_of(browser, "billing") == "open",
            "the open breaker in admin",
            fast_publisher.run_once,
        )
        assert "1 process: 1 open" in browser.page_source

        browser.find_element(By.CSS_SELECTOR, "#result_list input[name=_selected_action]").click()
        Select(browser.find_element(By.NAME, "action")).select_by_visible_text("Force closed")
        browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
        message = WebDriverWait(browser, 10).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".messagelist"), "no message after the action"
        )
        assert "1 circuit breaker set forced closed" in message[0].text

        until(
            browser,
            lambda: state_of(browser, "billing") == "forced closed",
            "the forced-closed state in admin",
            fast_publisher.run_once,
        )
        assert breaker.state[server.url] is CircuitState.FORCED_CLOSED
        with clients["billing"].request(get("down")) as response:
            assert response.status == 500  # the call went through again

        log_in(browser, live_server.url, "viewer")
        assert state_of(browser, "billing") == "forced closed"
        assert not browser.find_elements(By.NAME, "action")
        assert not browser.find_elements(By.CSS_SELECTOR, "input[name=_selected_action]")

"""Sync-only middleware below AioRequestMiddleware: under ASGI no async view is cancelled at its
deadline, and the system check (W012) and the first ASGI request's log say so.

A review found it: an async view given 0.3 s answered 200 after its full sleep under uvicorn, and
nothing said why (docs/server.md said only that the stack must be async down to the view).
"""

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.core.handlers.asgi import ASGIHandler
from django.test import Client
from pytest_django.fixtures import Settings

from django_aio_request.server.async_stack import sync_only_below
from tests.server.test_middleware import MIDDLEWARE, asgi_get, asgi_request, server_setting
from tests.support.loopback import free_port
from tests.support.manage import manage

ROOT = Path(__file__).resolve().parents[2]
SYNC_ONLY = "tests.support.urls_server.SyncOnlyMiddleware"
ASYNC_BELOW = "tests.support.urls_server.AsyncAfterViewMiddleware"
MIXIN = "django.middleware.gzip.GZipMiddleware"  # a MiddlewareMixin: async-capable
WARNING = "cannot run async (tests.support.urls_server.SyncOnlyMiddleware)"

pytestmark = pytest.mark.urls("tests.support.urls_server")


@pytest.fixture(autouse=True)
def _cancelling(settings: Settings) -> None:
    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and WARNING in r.getMessage()]


def test_a_sync_only_middleware_below_keeps_an_async_view_from_being_cancelled(settings: Settings) -> None:
    """What the warning says, through Django's ASGIHandler; above AioRequestMiddleware it does no harm."""
    settings.MIDDLEWARE = [MIDDLEWARE, SYNC_ONLY]
    status, _, _, took = asgi_get("/aslow?sleep=1.5", {"X-Request-Timeout": "0.3"})
    assert (status, took >= 1.5) == (200, True)
    settings.MIDDLEWARE = [SYNC_ONLY, MIDDLEWARE]
    status, _, _, took = asgi_get("/aslow?sleep=1.5", {"X-Request-Timeout": "0.3"})
    assert status == 408
    assert 0.28 < took < 1.0
    settings.MIDDLEWARE = [MIDDLEWARE, MIXIN, ASYNC_BELOW]
    status, _, _, took = asgi_get("/aslow?sleep=1.5", {"X-Request-Timeout": "0.3"})
    assert status == 408
    assert 0.28 < took < 1.0


def test_an_async_only_middleware_between_lets_an_async_view_below_sync_only_middleware_be_cancelled(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """An async-only middleware between AioRequestMiddleware and a sync-only one puts it back in
    async mode, and asgiref (3.8 on) passes its cancellation through the sync-only one's thread to the
    view: 408 at the deadline. W012 and the first request's log said it was not cancelled (a review).
    Below the sync-only one, the async-only middleware changes nothing: not cancelled, and said so."""
    settings.MIDDLEWARE = [MIDDLEWARE, ASYNC_BELOW, SYNC_ONLY, MIXIN]
    with caplog.at_level(logging.WARNING, logger="django_aio_request"):
        status, _, _, took = asgi_get("/aslow?sleep=1.5", {"X-Request-Timeout": "0.3"})
    assert status == 408
    assert 0.28 < took < 1.0
    assert warnings(caplog) == []
    settings.MIDDLEWARE = [MIDDLEWARE, SYNC_ONLY, ASYNC_BELOW]
    with caplog.at_level(logging.WARNING, logger="django_aio_request"):
        status, _, _, took = asgi_get("/aslow?sleep=1.5", {"X-Request-Timeout": "0.3"})
    assert (status, took >= 1.5) == (200, True)
    assert len(warnings(caplog)) == 1


def test_with_an_asgiref_that_does_not_pass_cancellation_through_threads_the_sandwich_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asgiref before 3.8 (Django 4.2 allows 3.6) ran the view below a sync-only middleware's thread
    on to its end, an async-only middleware between them or not."""
    import asgiref

    monkeypatch.setattr(asgiref, "__version__", "3.7.2")
    assert sync_only_below([MIDDLEWARE, ASYNC_BELOW, SYNC_ONLY]) == [SYNC_ONLY]
    assert sync_only_below([MIDDLEWARE, ASYNC_BELOW, MIXIN]) == []
    monkeypatch.setattr(asgiref, "__version__", "3.8.0")
    assert sync_only_below([MIDDLEWARE, ASYNC_BELOW, SYNC_ONLY]) == []


@pytest.mark.parametrize(
    ("middleware", "expected"),
    [
        ([MIDDLEWARE, SYNC_ONLY], [SYNC_ONLY]),
        (["django_aio_request.server.middleware.AioRequestMiddleware", MIXIN, SYNC_ONLY], [SYNC_ONLY]),
        ([SYNC_ONLY, MIDDLEWARE, MIXIN, ASYNC_BELOW], []),  # above it: no harm
        ([SYNC_ONLY, MIXIN], []),  # no AioRequestMiddleware
        ([MIDDLEWARE, "no.such.Middleware", SYNC_ONLY], [SYNC_ONLY]),  # Django reports the import itself
        ([MIDDLEWARE, 42, None], []),  # nonsense: Django's to report
        ([MIDDLEWARE, SYNC_ONLY, SYNC_ONLY], [SYNC_ONLY]),  # named once
        ([MIDDLEWARE, ASYNC_BELOW, SYNC_ONLY, MIXIN], []),  # async-only between: AioRequestMiddleware runs async
        ([MIDDLEWARE, SYNC_ONLY, ASYNC_BELOW], [SYNC_ONLY]),  # async-only below it: no help
        ([MIDDLEWARE, SYNC_ONLY, ASYNC_BELOW, SYNC_ONLY], [SYNC_ONLY]),
        ("not a list", []),
        (None, []),
    ],
)
def test_sync_only_below_names_what_django_would_run_in_sync_mode(middleware: object, expected: list[str]) -> None:
    assert sync_only_below(middleware) == expected


# What the admin of settings.test asks for (admin.E408-E410); all async-capable.
ADMIN_NEEDS = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]


def _check_settings(middleware: list[str], cancel: bool) -> str:
    middleware = [*middleware, *ADMIN_NEEDS]
    return f"""
from settings.test import *
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}}
MIDDLEWARE = {middleware!r}
AIO_REQUEST = {{"CANCEL_ASYNC_VIEWS_ON_TIMEOUT": {cancel!r}}}
"""


@pytest.mark.parametrize(
    ("middleware", "cancel", "warned"),
    [
        ([MIDDLEWARE, MIXIN, SYNC_ONLY], True, True),
        ([SYNC_ONLY, MIDDLEWARE, MIXIN], True, False),
        ([MIDDLEWARE, MIXIN, SYNC_ONLY], False, False),
        ([MIDDLEWARE, "no.such.Middleware"], True, False),
        ([MIDDLEWARE, ASYNC_BELOW, SYNC_ONLY], True, False),
    ],
    ids=["below", "above", "not-cancelling", "unimportable", "async-only-between"],
)
def test_manage_py_check_warns_w012_for_sync_only_middleware_below(
    tmp_path: Path, middleware: list[str], cancel: bool, warned: bool
) -> None:
    (tmp_path / "stack_settings.py").write_text(_check_settings(middleware, cancel))
    done = manage("check", settings="stack_settings", path=tmp_path)
    assert "Traceback" not in done.stderr + done.stdout
    assert ("(django_aio_request.W012)" in done.stderr) is warned, done.stderr
    assert done.returncode == 0  # a warning: the project still runs
    if warned:
        assert WARNING in done.stderr
        assert "HINT: give that middleware async_capable = True" in done.stderr


def test_the_first_asgi_request_logs_the_warning_once(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    settings.MIDDLEWARE = [MIDDLEWARE, SYNC_ONLY]  # (override_settings looks again at the next request)
    handler = ASGIHandler()

    async def eight_at_once() -> None:
        await asyncio.gather(*(asgi_request(handler, "/actx", {}) for _ in range(8)))

    with caplog.at_level(logging.WARNING, logger="django_aio_request"):
        asyncio.run(eight_at_once())
        asgi_get("/actx", {})
    assert len(warnings(caplog)) == 1


@pytest.mark.parametrize(
    "middleware", [[MIDDLEWARE, MIXIN], [SYNC_ONLY, MIDDLEWARE]], ids=["async-capable", "sync-only-above"]
)
def test_no_warning_for_a_stack_that_can_cancel(
    settings: Settings, caplog: pytest.LogCaptureFixture, middleware: list[str]
) -> None:
    settings.MIDDLEWARE = middleware
    with caplog.at_level(logging.WARNING, logger="django_aio_request"):
        asgi_get("/actx", {})
    assert [r for r in caplog.records if "cannot run async" in r.getMessage()] == []


def test_no_warning_under_wsgi_nor_without_cancelling(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    settings.MIDDLEWARE = [MIDDLEWARE, SYNC_ONLY]
    with caplog.at_level(logging.WARNING, logger="django_aio_request"):
        Client().get("/ctx")  # a sync handler: async views are never cancelled there (docs/server.md)
        settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=False)
        asgi_get("/actx", {})
    assert warnings(caplog) == []


SERVICE_SETTINGS = f"""
from settings.test import *
ROOT_URLCONF = "tests.support.urls_server"
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}}
MIDDLEWARE = [{MIDDLEWARE!r}, {SYNC_ONLY!r}]
AIO_REQUEST = {{"SERVICE_NAME": "stack-tests", "CANCEL_ASYNC_VIEWS_ON_TIMEOUT": True}}
"""


@pytest.fixture
def uvicorn_service(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    (tmp_path / "stack_service_settings.py").write_text(SERVICE_SETTINGS)
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "stack_service_settings",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
    }
    command = [sys.executable, "-m", "uvicorn", "tests.support.asgi_app:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        started = time.monotonic()
        while True:
            try:
                requests.get(url + "ctx", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() - started > 20:
                    raise RuntimeError(f"uvicorn did not start: {process.communicate()[0]}") from None
                time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_under_uvicorn_the_log_says_why_an_async_view_ran_past_its_deadline(
    uvicorn_service: tuple[str, subprocess.Popen[str]],
) -> None:
    url, process = uvicorn_service
    started = time.monotonic()
    answer = requests.get(url + "aslow?sleep=1.2", headers={"X-Request-Timeout": "0.3"}, timeout=10)
    assert (answer.status_code, time.monotonic() - started >= 1.2) == (200, True)
    requests.get(url + "ctx", timeout=5)
    process.terminate()
    output = process.communicate(timeout=10)[0]
    assert output.count(WARNING) == 1, output
    assert "Traceback" not in output

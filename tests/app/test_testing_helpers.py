"""django_aio_request.testing: the helpers users test their own views with (docs/testing.md).

The fake replaces the transport only: these tests check that retries, hedges, the breaker, the retry
budget and metrics still run, and that the fake behaves like the real transport at a deadline."""

import asyncio
import contextlib
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
import requests
import responses as responses_lib
from django.test import Client, SimpleTestCase, override_settings
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings

import django_aio_request as dar
from django_aio_request import Priority, RequestsTransport, clients, get, get_context, testing
from django_aio_request import metrics as all_metrics
from django_aio_request.pytest_plugin import AioRequestFixture
from django_aio_request.testing import (
    BreakerNotForcedWarning,
    FakeDownstream,
    FakeReplacedWarning,
    UnexpectedCallError,
    fake_client,
    fake_under,
    force_breaker,
    network_error,
    reply,
    request_headers,
    serving,
)
from tests.support import postgres
from tests.support.loopback import LoopbackServer
from tests.support.redis_server import require_redis

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "http://billing.test:8080/api/"
BREAKER = {"BREAK_DURATION": 5, "SAMPLING_DURATION": 5, "MINIMUM_THROUGHPUT": 2, "FAILURE_THRESHOLD": 0.5}


def billing_settings(**extra: Any) -> dict[str, Any]:
    return {
        "SERVICE_NAME": "orders",
        "CLIENTS": {
            "billing": {"ENDPOINT": ENDPOINT, "TIMEOUT": 5.0, "CIRCUIT_BREAKER": BREAKER, **extra},
        },
    }


@pytest.fixture(autouse=True)
def _billing(settings: Settings) -> None:
    settings.MIDDLEWARE = ["django_aio_request.middleware.AioRequestMiddleware"]
    settings.ROOT_URLCONF = "tests.support.urls_app"
    settings.AIO_REQUEST = billing_settings()


def view(path: str, **headers: Any) -> dict[str, Any]:
    answer = Client().get(path, headers=request_headers(**headers))
    assert answer.status_code == 200
    data: dict[str, Any] = answer.json()
    return data


def test_the_fixture_is_loaded_by_the_plugin_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("django_aio_request")
    assert plugin is not None
    assert plugin.__name__ == "django_aio_request.pytest_plugin"


def test_the_plugin_leaves_a_project_that_does_not_use_the_package_alone(tmp_path: Path) -> None:
    """pytest loads the plugin in every project of an environment where the package is installed.
    Loading it imported the whole package (requests, prometheus_client, this package's metrics in
    the default registry), and a run whose conftest made the PROMETHEUS_MULTIPROC_DIR directory died
    before its first test ("PROMETHEUS_MULTIPROC_DIR ... is not a directory", exit 3)."""
    metrics_dir = tmp_path / "prometheus"
    (tmp_path / "conftest.py").write_text(f"import os\nos.makedirs({str(metrics_dir)!r}, exist_ok=True)\n")
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\n"
        "def test_plain():\n"
        "    loaded = ('requests', 'prometheus_client', 'django_aio_request.core')\n"
        "    assert [m for m in loaded if m in sys.modules] == []\n"
    )
    done = _pytest_in(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def _pytest_in(project: Path, *options: str, **environ: str) -> "subprocess.CompletedProcess[str]":
    """A user's pytest run in ``project`` (its settings its own, not this suite's), with ``options``."""
    env = {**os.environ, **environ}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    plain = ["-q", "-p", "no:cacheprovider", "-p", "no:django", "-p", "no:xdist"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plain, *options],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_view_against_a_scripted_downstream(aio_request: AioRequestFixture) -> None:
    billing = aio_request.fake("billing")
    billing.route("invoices/{id}", reply(200, json={"id": 7, "amount": 10}))

    data = view("/invoice/7/", timeout=2.0, priority="high")

    assert data["status"] == 200
    assert data["body"] == '{"id": 7, "amount": 10}'
    [call] = billing.calls
    assert (call.method, call.path, call.template) == ("GET", "invoices/7", "invoices/{id}")
    assert call.timeout is not None
    assert 1.5 < call.timeout <= 2.0
    assert call.priority is Priority.HIGH
    assert call.headers["X-Service-Name"] == "orders"


def test_a_fake_answers_a_scripted_redirect_as_it_is_and_follows_none(aio_request: AioRequestFixture) -> None:
    """docs/testing.md: following redirects is the transport's, which the fake replaces; a review found
    the page silent on it (through ``responses``, the real transport followed it to a 200)."""
    billing = aio_request.fake("billing")
    billing.route("invoices/1", reply(302, headers={"Location": ENDPOINT + "invoices/2"}))
    billing.route("invoices/2", reply(200, json={"id": 2}))

    data = view("/invoice/1/")

    assert data["status"] == 302
    assert [call.path for call in billing.calls] == ["invoices/1"]


def test_retries_run_through_the_real_strategy_and_metrics(settings: Settings, aio_request: AioRequestFixture) -> None:
    """GET has 3 sequential attempts by default: a 503, a network error, then a 200."""
    settings.AIO_REQUEST = billing_settings(CIRCUIT_BREAKER=None)
    billing = aio_request.fake("billing")
    billing.route("invoices/8", reply(503), network_error(), reply(200, body="third"))
    labels = {"request_endpoint": ENDPOINT, "request_method": "GET", "attempt": "2"}
    before = REGISTRY.get_sample_value("aio_request_winning_attempt_total", labels) or 0.0

    data = view("/invoice/8/")

    assert (data["status"], data["body"]) == (200, "third")
    assert len(billing.calls_to("invoices/8")) == 3
    all_metrics.flush()
    assert REGISTRY.get_sample_value("aio_request_winning_attempt_total", labels) == before + 1


def test_a_delay_past_the_deadline_ends_at_the_deadline(aio_request: AioRequestFixture) -> None:
    billing = aio_request.fake("billing")
    billing.route("invoices/9", reply(200, delay=3.0))

    data = view("/invoice/9/", timeout=0.3)

    assert data["status"] == 408
    assert 0.25 < data["elapsed"] < 0.8  # not the reply's 3 s
    assert len(billing.calls) == 1  # no time left for a retry


def test_failures_trip_the_real_breaker(aio_request: AioRequestFixture) -> None:
    billing = aio_request.fake("billing")
    billing.route("invoices/*", reply(500))

    # Two attempts fail (MINIMUM_THROUGHPUT 2, 100% failed): the breaker opens and answers the third.
    first = view("/invoice/10/")
    second = view("/invoice/11/")

    assert first["status"] == second["status"] == 502
    assert [c.path for c in billing.calls] == ["invoices/10", "invoices/10"]  # nothing more was sent


def test_forcing_the_breaker_open_then_back(aio_request: AioRequestFixture) -> None:
    billing = aio_request.fake("billing")
    billing.route("invoices/*", reply(200))
    with force_breaker("billing", "open"):
        forced = view("/invoice/12/")
    after = view("/invoice/13/")

    assert forced["status"] == 502
    assert after["status"] == 200
    assert [c.path for c in billing.calls] == ["invoices/13"]


def test_the_fixture_forces_a_breaker_until_the_end_of_the_test(aio_request: AioRequestFixture) -> None:
    aio_request.fake("billing").route("invoices/*", reply(200))
    aio_request.force_breaker("billing", "open")

    assert view("/invoice/14/")["status"] == 502


def test_an_unscripted_path_fails_the_test_loudly(aio_request: AioRequestFixture) -> None:
    aio_request.fake("billing", allow_unexpected=True).route("invoices/1", reply(200))

    unexpected = pytest.raises(UnexpectedCallError, match=r"GET invoices/2: no route .* \(routes: invoices/1\)")
    with unexpected, clients["billing"].request(get("invoices/2")):
        pass


def _invoice_or_default() -> str:
    """Code under test with a fallback, as calls to other services often have: a typo in its path."""
    try:
        with clients["billing"].request(get("invoice/7")) as response:  # the route is invoices/{id}
            return response.read().decode()
    except Exception:
        return "default"


def test_a_call_no_route_answers_fails_the_block_even_when_the_code_under_test_catches_it() -> None:
    """UnexpectedCallError is an exception like any other to the code under test: a fallback caught
    it, and the test passed while the view called a path nobody routed (a review)."""
    failing = pytest.raises(
        UnexpectedCallError,
        match=r"1 call\(s\) no route answers .*GET invoice/7: no route .*\(routes: invoices/\{id\}\)",
    )
    with failing, fake_client("billing") as billing:
        billing.route("invoices/{id}", reply(200, body=b"paid"))
        assert _invoice_or_default() == "default"
    assert [call.path for call in billing.calls] == ["invoice/7"]


def test_the_fixture_s_fake_fails_the_test_at_its_end_when_the_code_under_test_caught_an_unexpected_call() -> None:
    stack = contextlib.ExitStack()  # what the fixture tears down after the test
    with stack:
        AioRequestFixture(stack).fake("billing").route("invoices/{id}", reply(200, body=b"paid"))
        assert _invoice_or_default() == "default"
        teardown = pytest.raises(UnexpectedCallError, match="GET invoice/7")
        with teardown:
            stack.close()


def test_a_fake_allowing_unexpected_calls_keeps_them_and_an_error_in_the_block_goes_on_as_it_was() -> None:
    with fake_client("billing", allow_unexpected=True) as billing:
        assert _invoice_or_default() == "default"
    assert billing.unexpected == [f"GET invoice/7: no route in the fake of {ENDPOINT} (routes: none)"]

    def failing_test() -> None:
        with fake_client("billing"):
            assert _invoice_or_default() == "default"
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):  # not replaced by the unexpected call's error
        failing_test()


def test_a_test_failing_for_its_own_reason_gets_the_unexpected_calls_in_a_note() -> None:
    """The fallback's answer failed the test's assert: that failure goes on, and the call no route
    answered, its likely cause, is in its notes (it was nowhere)."""

    def failing_test() -> None:
        with fake_client("billing"):
            assert _invoice_or_default() == "paid"

    with pytest.raises(AssertionError) as raised:
        failing_test()
    assert not isinstance(raised.value, UnexpectedCallError)
    assert any("GET invoice/7: no route" in note for note in raised.value.__notes__)


PYTEST_PROJECT_CONFTEST = """
import django
from django.conf import settings

settings.configure(AIO_REQUEST={"CLIENTS": {"billing": {"ENDPOINT": "http://billing.test:8080/api/"}}})
django.setup()


def pytest_sessionfinish(session):
    kept = [item.name for item in session.items if hasattr(item, "_django_aio_request_failed_with")]
    print(f"failures kept past their tests: {kept}")
    from django_aio_request import testing

    print(f"failure kept past the teardown: {testing._test_failure}")
"""

# A project's own fixture around a fake_client() block, as docs/testing.md shows: a test that failed
# with the unexpected call's own error was failed again by the block's end, at its teardown (a review).
PROJECT_FAKE_CONFTEST = """
import pytest
from django_aio_request.testing import fake_client


@pytest.fixture
def billing():
    with fake_client("billing") as fake:
        yield fake
"""

PROJECT_FAKE_TESTS = """
from django_aio_request import clients, get


def test_fixture_uncaught(billing):
    with clients["billing"].request(get("nothing")):
        pass


def test_fixture_caught(billing):
    try:
        with clients["billing"].request(get("other")):
            pass
    except Exception:
        pass
"""

# A project's own fixture named aio_request (the plugin's is shadowed): its failing tests' frames were
# kept on their items for the session, 1 GB over 1,000 tests holding 1 MB each (a review).
OWN_FIXTURE_CONFTEST = """
import pytest


@pytest.fixture
def aio_request():
    return "http://x"
"""

OWN_FIXTURE_TESTS = """
def test_own_fixture(aio_request):
    assert aio_request == "something else"
"""

PYTEST_PROJECT_TESTS = """
import asyncio

from django_aio_request import clients, get
from django_aio_request.testing import fake_client, reply


def fallback():
    try:
        with clients["billing"].request(get("invoice/7")):
            return "real"
    except Exception:
        return "default"


def test_uncaught(aio_request):
    aio_request.fake("billing").route("invoices/{id}", reply(200))
    with clients["billing"].request(get("nothing")):
        pass


def test_caught(aio_request):
    aio_request.fake("billing").route("invoices/{id}", reply(200))
    assert fallback() == "default"


def test_lazy(request):
    request.getfixturevalue("aio_request").fake("billing")
    with clients["billing"].request(get("nothing")):
        pass


def test_grouped(aio_request):
    aio_request.fake("billing")

    async def call():
        async with clients["billing"].arequest(get("grouped")):
            pass

    async def calls():
        async with asyncio.TaskGroup() as group:
            group.create_task(call())

    asyncio.run(calls())
"""


def test_through_the_fixture_an_unexpected_call_fails_its_test_once(tmp_path: Path) -> None:
    """A user's suite, run as users run it: an uncaught call fails its test, once, also through a
    fixture asked for in the test's body; a caught one fails it at the fixture's teardown. The
    uncaught one failed its test and then again at the teardown, saying it had been caught (a
    review). So does one whose error reaches the test inside an exception group (a ``TaskGroup``'s),
    and one through a project's own fixture around a ``fake_client()`` block: both failed again at
    the teardown (a review). Nothing of a failed test is kept past it, under a project's own fixture
    of the name too."""
    (tmp_path / "conftest.py").write_text(PYTEST_PROJECT_CONFTEST)
    (tmp_path / "test_user.py").write_text(PYTEST_PROJECT_TESTS.replace("fake_client, ", ""))
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "conftest.py").write_text(OWN_FIXTURE_CONFTEST)
    (tmp_path / "own" / "test_own.py").write_text(OWN_FIXTURE_TESTS)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "conftest.py").write_text(PROJECT_FAKE_CONFTEST)
    (tmp_path / "project" / "test_project.py").write_text(PROJECT_FAKE_TESTS)
    out = _pytest_in(tmp_path, "-rA").stdout
    assert "5 failed, 2 passed, 2 errors" in out, out
    assert "FAILED test_user.py::test_uncaught" in out
    assert "FAILED test_user.py::test_lazy" in out
    assert "FAILED test_user.py::test_grouped" in out
    assert "ERROR test_user.py::test_caught - " in out
    assert "FAILED project/test_project.py::test_fixture_uncaught" in out
    assert "ERROR project/test_project.py::test_fixture_caught - " in out
    assert "GET invoice/7: no route" in out
    assert "failures kept past their tests: []" in out
    assert "failure kept past the teardown: None" in out


def test_a_fake_is_seen_by_every_thread_of_the_process() -> None:
    """docs/testing.md: a fake is the process's, as ``clients`` is: another thread's call reaches it."""
    with fake_client("billing") as billing:
        billing.route("x", reply(201))
        statuses: list[int] = []

        def other_thread() -> None:
            with clients["billing"].request(get("x")) as response:
                statuses.append(response.status)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(10)
    assert statuses == [201]
    assert [call.path for call in billing.calls] == ["x"]


def test_a_template_no_route_matches_is_named_in_the_error() -> None:
    """A call whose template no route names (``invoices/{pk}`` against a route for ``invoices/{id}``)
    was named by its path only, which hid why (a review); a route with the URL's query, as the call
    wrote it, answers it."""
    with fake_client("billing", allow_unexpected=True) as billing:
        billing.route("invoices/{id}", reply(200))
        billing.route("search?q=books", reply(200, body="books"))
        billing.route("search?q=music", reply(200, body="music"))
        unexpected = pytest.raises(UnexpectedCallError, match=r"GET invoices/7 \(template invoices/\{pk\}\): no route")
        with unexpected, clients["billing"].request(get("invoices/{pk}", path_parameters={"pk": 7})):
            pass
        with clients["billing"].request(get("search?q=music")) as response:
            assert response.read() == b"music"


def test_a_call_that_fails_a_fixture_s_setup_is_reported_again_at_its_teardown(tmp_path: Path) -> None:
    """docs/testing.md: only the test's own failure is handed to the blocks; a call that failed another
    fixture's setup, the fake's block open in its own fixture, is reported again at the teardown (a
    known gap)."""
    (tmp_path / "conftest.py").write_text(PYTEST_PROJECT_CONFTEST)
    (tmp_path / "test_setup.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from django_aio_request import clients, get
            from django_aio_request.testing import fake_client


            @pytest.fixture
            def billing():
                with fake_client("billing") as fake:
                    yield fake


            @pytest.fixture
            def warmed(billing):
                with clients["billing"].request(get("warm-up")):
                    pass
                yield


            def test_uses_it(warmed):
                pass
            """
        )
    )
    out = _pytest_in(tmp_path, "-rA").stdout
    assert "2 errors" in out, out
    assert "ERROR test_setup.py::test_uses_it - " in out
    assert out.count("GET warm-up: no route") >= 2


def test_a_route_for_one_method_is_named_with_it_when_another_method_finds_no_route() -> None:
    with fake_client("billing", allow_unexpected=True) as billing:
        billing.route("invoices/1", reply(200), method="GET")
        unexpected = pytest.raises(UnexpectedCallError, match=r"POST invoices/1: .*\(routes: GET invoices/1\)")
        with unexpected, clients["billing"].request(dar.post("invoices/1", body=b"{}")):
            pass


@fake_client("billing")
def test_a_test_a_fake_decorates_routes_it_through_fake_under() -> None:
    fake_under("billing").route("invoices/{id}", reply(200, body=b"paid"))
    with clients["billing"].request(get("invoices/{id}", path_parameters={"id": 7})) as response:
        assert response.read() == b"paid"
    assert [call.path for call in fake_under("billing").calls] == ["invoices/7"]


def test_fake_under_a_name_without_a_fake_says_so() -> None:
    with pytest.raises(LookupError, match=r"no fake_client\('billing'\) block is open"):
        fake_under("billing")


def test_a_block_entered_and_not_kept_lasts_until_it_is_exited() -> None:
    """``fake_client("billing").__enter__()`` with nothing holding the block: it was freed at once and
    its end ran, so the calls that followed went to the real endpoint (a review)."""
    before = set(testing._open_blocks)
    fake = fake_client("billing").__enter__()
    gc.collect()
    fake.route("x", reply(201))
    (block,) = set(testing._open_blocks) - before
    try:
        with clients["billing"].request(get("x")) as response:
            assert response.status == 201
        assert [call.path for call in fake.calls] == ["x"]
    finally:
        block.__exit__(None, None, None)
    assert clients["billing"].transport is not fake


def test_a_call_with_an_empty_segment_after_the_endpoint_s_path_is_not_routed_as_one_without(
    settings: Settings,
) -> None:
    """get("/api/v1//invoices/7") goes to /api/v1//invoices/7: the fake answered it from
    route("invoices/7") and recorded "invoices/7" (a review)."""
    settings.AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://billing.test:8080/api/v1/"}}}
    with fake_client("billing", allow_unexpected=True) as billing:
        billing.route("invoices/7", reply(200))
        with pytest.raises(UnexpectedCallError), clients["billing"].request(get("/api/v1//invoices/7")):
            pass
    assert [c.path for c in billing.calls] == ["/invoices/7"]


@pytest.mark.parametrize("sent", ["/invoices/7", "../invoices/7"])
def test_a_call_outside_the_endpoint_s_path_is_recorded_as_sent_and_answered_by_no_route(
    settings: Settings, sent: str
) -> None:
    """With the endpoint http://billing.test:8080/api/v1/, get("/invoices/7") goes to
    http://billing.test:8080/invoices/7 (joined as in a browser): the fake answered it from
    route("invoices/7"), recorded as "invoices/7", so the test passed where the real call went to
    the wrong path (a review)."""
    settings.AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://billing.test:8080/api/v1/"}}}
    with fake_client("billing", allow_unexpected=True) as billing:
        billing.route("invoices/7", reply(200))
        billing.route("*", reply(200))
        outside = pytest.raises(UnexpectedCallError, match="outside the path of the fake's endpoint")
        with outside, clients["billing"].request(get(sent)):
            pass
        with clients["billing"].request(get("invoices/7")) as response:
            assert response.status == 200
    where = "/invoices/7" if sent.startswith("/") else "/api/invoices/7"
    assert [(c.path, c.template) for c in billing.calls] == [(where, sent), ("invoices/7", "invoices/7")]


def test_hedges_and_cancellation_from_async_code(settings: Settings, aio_request: AioRequestFixture) -> None:
    hedged = {"NAME": "parallel", "ATTEMPTS_COUNT": 2, "DELAYS": {"NAME": "constant", "DELAY": 0.1}}
    settings.AIO_REQUEST = billing_settings(SAFE_METHOD_STRATEGY=hedged, RETRY_BUDGET=False)
    billing = aio_request.fake("billing")
    billing.route("invoices/15", reply(200, body="slow", delay=2.0), reply(200, body="hedge"))

    async def go() -> tuple[int, bytes, float]:
        started = time.monotonic()
        with serving(timeout=3.0, priority="low"):
            async with clients["billing"].arequest(get("invoices/15")) as response:
                return response.status, response.read(), time.monotonic() - started

    status, body, elapsed = asyncio.run(go())

    assert (status, body) == (200, b"hedge")
    assert elapsed < 0.6  # the slow first attempt was abandoned, not waited for
    first, second = billing.calls
    assert first.priority is second.priority is Priority.LOW
    assert first.timeout is not None
    assert 2.5 < first.timeout <= 3.0


def test_the_real_client_comes_back_after_the_fake() -> None:
    with fake_client("billing") as fake:
        assert isinstance(clients["billing"].transport, FakeDownstream)
        assert clients["billing"].transport is fake
    assert isinstance(clients["billing"].transport, RequestsTransport)


def test_a_reference_kept_before_the_fake_calls_the_fake(settings: Settings, server: LoopbackServer) -> None:
    """``billing = clients["billing"]`` at import, as README shows: the fake only replaced the name, so
    that reference called the real endpoint in the test, and no UnexpectedCallError failed it."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    server.route("/invoices/5", lambda h: h.reply(200, b"real"))
    kept = clients["billing"]

    async def kept_async() -> int:
        async with kept.arequest(get("invoices/5")) as response:
            return response.status

    with fake_client("billing", allow_unexpected=True) as fake:
        fake.route("invoices/5", reply(404))
        with kept.request(get("invoices/5")) as response:
            assert response.status == 404
        assert asyncio.run(kept_async()) == 404
        with pytest.raises(UnexpectedCallError), kept.request(get("unscripted")):
            pass
        with fake_client("billing") as inner:  # a fake inside a fake: the latest one answers
            inner.route("invoices/5", reply(410))
            with kept.request(get("invoices/5")) as response:
                assert response.status == 410
    assert [call.path for call in fake.calls] == ["invoices/5", "invoices/5", "unscripted"]
    assert server.received("/invoices/5") == []
    with kept.request(get("invoices/5")) as response:  # its own again
        assert (response.status, response.read()) == (200, b"real")
    assert clients["billing"] is kept


def test_a_reference_looked_up_under_a_fake_calls_what_is_under_the_name_after_it(
    settings: Settings, server: LoopbackServer
) -> None:
    """A module first imported during a test that fakes the client (pytest-django imports the URLconf,
    and the views that keep ``billing = clients["billing"]``, at a session's first request) kept the
    fake: every later test's call through it answered from that first test's script, past the later
    tests' fakes, and never reached the real endpoint (a review)."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    server.route("/invoices/5", lambda h: h.reply(200, b"real"))
    with fake_client("billing") as first:
        first.route("invoices/5", reply(404))
        kept = clients["billing"]
    with fake_client("billing") as second:
        second.route("invoices/5", reply(201))
        with kept.request(get("invoices/5")) as response:
            assert response.status == 201
    assert (len(first.calls), len(second.calls)) == (0, 1)
    with kept.request(get("invoices/5")) as response:  # no fake: the real client, and the network
        assert (response.status, response.read()) == (200, b"real")
    assert len(server.received("/invoices/5")) == 1


def test_a_reference_kept_before_a_settings_change_calls_the_client_of_the_new_settings_and_the_fakes(
    settings: Settings, server: LoopbackServer
) -> None:
    """A change of ``AIO_REQUEST`` (``override_settings``, pytest-django's ``settings``) rebuilds the
    clients. A reference kept from before went on with the old client and the old settings, and a
    fake made after the change, as the docs ask, never reached it: the test's calls went to the
    real endpoint, with no UnexpectedCallError, in that test and every later one (a review)."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    server.route("/invoices/5", lambda h: h.reply(200, b"real"))
    kept = clients["billing"]
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url, TIMEOUT=2.0)
    with fake_client("billing") as fake:
        fake.route("invoices/5", reply(404))
        with kept.request(get("invoices/5")) as response:
            assert response.status == 404
    assert server.received("/invoices/5") == []
    with kept.request(get("invoices/5")) as response:
        assert (response.status, response.read()) == (200, b"real")
    (received,) = server.received("/invoices/5")
    assert float(received.headers["X-Request-Timeout"]) <= 2.0  # the new settings' TIMEOUT, not 5
    assert kept._standing_in() is clients["billing"]
    with force_breaker(kept, "open"), kept.request(get("invoices/5")) as response:
        assert response.status == 502  # the circuit its calls meet, not the old client's (a review)
    assert len(server.received("/invoices/5")) == 1


def test_a_fake_a_settings_change_replaced_under_its_block_warns(settings: Settings, server: LoopbackServer) -> None:
    """A fake made in ``setUp`` and a test method's ``@override_settings``, applied after it: the
    change rebuilt the clients, the view's call reached the real endpoint, and nothing said why the
    fake recorded nothing (a review). The block's end says so now; a change with no call made after
    it (a ``settings`` fixture torn down before the fake's) is no reason to."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    server.route("/invoices/5", lambda h: h.reply(200, b"real"))

    def fake_then_change() -> FakeDownstream:
        with fake_client("billing") as fake:
            fake.route("invoices/5", reply(404))
            changed = override_settings(AIO_REQUEST=billing_settings(ENDPOINT=server.url, TIMEOUT=2.0))
            with changed, clients["billing"].request(get("invoices/5")) as response:
                assert response.status == 200
        return fake

    with pytest.warns(
        FakeReplacedWarning, match=r"fake_client\('billing'\): AIO_REQUEST changed while the fake"
    ) as said:
        fake = fake_then_change()
    assert fake.calls == []
    assert [w.filename for w in said] == [__file__]  # the with statement's, not contextlib's
    with warnings.catch_warnings():
        warnings.simplefilter("error", FakeReplacedWarning)
        with fake_client("billing"):
            settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url, TIMEOUT=3.0)


def breaker_overrides(client: Any) -> set[Any]:
    return {s.override for s in client.circuit_breaker.snapshot()}


@pytest.mark.parametrize("given", ["name", "kept reference"])
def test_a_client_built_from_settings_changed_inside_a_forced_block_is_forced_too(
    settings: Settings, server: LoopbackServer, given: str
) -> None:
    """pytest-django's ``settings`` changed inside ``force_breaker("billing", "open")``: the client
    built from them was not forced, and its call reached the endpoint (a review: 200, the server hit
    3 of 3 runs; with a shared cache its failures then opened the circuit there for every process)."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    server.route("/invoices/5", lambda h: h.reply(200, b"real"))
    kept = clients["billing"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", BreakerNotForcedWarning)  # every client under the name was forced
        with force_breaker("billing" if given == "name" else kept, "open"):
            settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url, TIMEOUT=2.0)
            for client in (clients["billing"], kept):
                with client.request(get("invoices/5")) as response:
                    assert (response.status, response.headers.get("X-Circuit-Breaker")) == (502, "1")
    assert server.received("/invoices/5") == []
    assert breaker_overrides(clients["billing"]) == {None}  # the block's end gave the new client back
    with kept.request(get("invoices/5")) as response:
        assert (response.status, response.read()) == (200, b"real")


def test_a_fake_made_or_put_back_inside_a_forced_block_is_forced_too(
    settings: Settings, server: LoopbackServer
) -> None:
    """A fake made inside ``force_breaker("billing", "open")`` answered from its script, and the real
    client a fake's end put back while the block was still open called its endpoint."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    server.route("/invoices/5", lambda h: h.reply(200, b"real"))
    with fake_client("billing") as outer_fake:  # under the name when the block begins
        outer_fake.route("invoices/5", reply(200))
        forcing = force_breaker("billing", "open")
        forcing.__enter__()
    with fake_client("billing") as fake:  # made in the block
        fake.route("invoices/5", reply(200))
        with clients["billing"].request(get("invoices/5")) as response:
            assert response.status == 502
    with clients["billing"].request(get("invoices/5")) as response:  # the real client, put back
        assert response.status == 502
    forcing.__exit__(None, None, None)
    assert (outer_fake.calls, fake.calls, server.received("/invoices/5")) == ([], [], [])
    assert breaker_overrides(clients["billing"]) <= {None}
    with clients["billing"].request(get("invoices/5")) as response:
        assert response.status == 200


def test_a_client_built_without_a_breaker_inside_a_forced_block_warns(
    settings: Settings, server: LoopbackServer
) -> None:
    """New settings without ``CIRCUIT_BREAKER``, inside the block: nothing can force that client, so
    its calls are sent; the block's end says so rather than let the test pass on calls it meant to stop."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    server.route("/invoices/5", lambda h: h.reply(200, b"real"))
    statuses = []

    def change_inside_the_block() -> None:
        with force_breaker("billing", "open"):
            settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url, CIRCUIT_BREAKER=None)
            with clients["billing"].request(get("invoices/5")) as response:
                statuses.append(response.status)

    with pytest.warns(BreakerNotForcedWarning, match=r"force_breaker\('billing', 'open'\): a client made") as said:
        change_inside_the_block()
    assert statuses == [200]
    assert [w.filename for w in said] == [__file__]  # the with statement's, not contextlib's
    assert len(server.received("/invoices/5")) == 1


def test_blocks_forcing_a_name_while_threads_rebuild_its_client_leave_nothing_forced(
    settings: Settings, server: LoopbackServer
) -> None:
    """Threads forcing the name open, one after another, while another changes the settings and
    calls: no call made inside a block is sent, and once every block ended no circuit is forced."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    server.route("/invoices/5", lambda h: h.reply(200, b"real"))
    inside: list[int] = []
    stop = threading.Event()

    def force_and_call() -> None:
        while not stop.is_set():
            with force_breaker("billing", "open"), clients["billing"].request(get("invoices/5")) as response:
                inside.append(response.status)

    threads = [threading.Thread(target=force_and_call) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for timeout in (2.0, 3.0) * 15:  # each a change that rebuilds the clients
            settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url, TIMEOUT=timeout)
            clients["billing"]
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert inside
    assert set(inside) == {502}
    assert server.received("/invoices/5") == []
    assert breaker_overrides(clients["billing"]) <= {None}
    with clients["billing"].request(get("invoices/5")) as response:
        assert response.status == 200


def run_test_case(case: type[SimpleTestCase], name: str) -> Any:
    """Runs one method of a Django test case as ``manage.py test`` would; its result."""
    import unittest

    result = unittest.TestResult()
    case(name)(result)  # __call__, as a suite does: Django runs async methods through it
    return result


def test_each_helper_as_a_decorator_of_an_async_test_method_runs_the_method_inside_it() -> None:
    # contextlib.contextmanager's objects decorate any function as a sync one: on an async test method
    # the block ended before the coroutine ran, which nobody awaited, and a body of `assert False`
    # passed (a review). Each helper now decorates an async method as a with block around its await.
    seen: dict[str, Any] = {}

    @override_settings(AIO_REQUEST=billing_settings())
    class Decorated(SimpleTestCase):
        @serving(timeout=5, priority="low")
        async def test_serving(self) -> None:
            seen["priority"] = get_context().priority
            seen["timeout"] = get_context().deadline.timeout  # type: ignore[union-attr]

        @fake_client("billing", allow_unexpected=True)
        async def test_fake(self) -> None:
            with pytest.raises(UnexpectedCallError):
                async with clients["billing"].arequest(get("invoices/5")):
                    pass
            seen["faked"] = True

        @force_breaker("billing", "open")
        async def test_forced(self) -> None:
            async with clients["billing"].arequest(get("invoices/5")) as response:
                seen["forced"] = response.status

        @serving(timeout=5)
        async def test_failing(self) -> None:
            raise AssertionError("the body ran")

    for name in ("test_serving", "test_fake", "test_forced"):
        result = run_test_case(Decorated, name)
        assert result.wasSuccessful(), (name, result.errors, result.failures)
    assert seen["priority"] is Priority.LOW
    assert 4 < seen["timeout"] <= 5
    assert seen["faked"] is True
    assert seen["forced"] == 502
    failing = run_test_case(Decorated, "test_failing")
    assert [str(error).splitlines()[-1] for _, error in failing.failures] == ["AssertionError: the body ran"]


def test_a_helper_as_a_decorator_makes_a_new_block_at_each_call(settings: Settings) -> None:
    @serving(timeout=0.5)
    def left() -> float:
        return get_context().deadline.timeout  # type: ignore[union-attr]

    first = left()
    time.sleep(0.2)
    assert 0.4 < first <= 0.5
    assert 0.4 < left() <= 0.5  # the deadline is made at each call, not at decoration
    assert get_context().deadline is None
    block = serving(priority="high")
    for _ in range(2):  # one helper's block, entered twice
        with block as context:
            assert context.priority is Priority.HIGH
        assert get_context().priority is None


def test_a_helper_decorating_a_class_is_refused_with_what_to_write_instead() -> None:
    with pytest.raises(TypeError, match=r"serving\(\) decorates test functions and methods, not a class"):

        @serving(timeout=1)
        class Whole(SimpleTestCase):
            pass


@pytest.mark.parametrize("make", [lambda: serving(timeout=0.5), lambda: force_breaker("billing", "open")])
def test_a_helper_called_without_with_warns_that_it_did_nothing(settings: Settings, make: Any) -> None:
    # serving(timeout=0.5) alone, as the fixture's aio_request.serving() is written, set no deadline
    # and said nothing (a review).
    settings.AIO_REQUEST = billing_settings()
    with pytest.warns(RuntimeWarning, match=r"\(\) was never entered, so it did nothing: write `with "):
        make()
    assert get_context().deadline is None


def test_a_fake_replaced_under_a_decorated_test_warns_at_the_test_function(settings: Settings) -> None:
    """Decorated, the warning named ``unittest/case.py``, where Python's default filter shows it once
    for all tests: it names the test function now."""
    settings.AIO_REQUEST = billing_settings()

    @fake_client("billing")
    def changes_settings() -> None:
        with override_settings(AIO_REQUEST=billing_settings(TIMEOUT=2.0)):
            clients["billing"]  # a real client made under the name

    with pytest.warns(FakeReplacedWarning) as said:
        changes_settings()
    code = changes_settings.__wrapped__.__code__  # type: ignore[attr-defined]
    assert [(w.filename, w.lineno) for w in said] == [(code.co_filename, code.co_firstlineno)]


def test_a_fake_replaced_under_the_fixture_warns_at_the_test_function(tmp_path: Path) -> None:
    """Made by the ``aio_request`` fixture, the fake's block ends at the fixture's teardown: its warning
    named the plugin's file, the same for every test (a review). It names the test function now."""
    (tmp_path / "conftest.py").write_text(PYTEST_PROJECT_CONFTEST)
    (tmp_path / "test_replaced.py").write_text(
        textwrap.dedent(
            """
            from django.test import override_settings
            from django_aio_request import clients


            def test_changes_settings(aio_request):
                aio_request.fake("billing")
                with override_settings(AIO_REQUEST={"CLIENTS": {"billing": {"ENDPOINT": "http://b.test/"}}}):
                    clients["billing"]


            def logged(test):
                @functools.wraps(test)
                def wrapper(*args, **kwargs):
                    return test(*args, **kwargs)

                return wrapper


            @logged
            def test_decorated(aio_request):
                test_changes_settings(aio_request)
            """
        ).replace("from django.test", "import functools\nfrom django.test")
    )
    out = _pytest_in(tmp_path, "-rA").stdout
    assert "2 passed, 2 warnings" in out, out
    assert "test_replaced.py:7: FakeReplacedWarning" in out, out  # the def line
    assert "test_replaced.py:21: FakeReplacedWarning" in out, out  # the decorated test, not its wrapper
    assert "pytest_plugin.py" not in out


def test_one_helper_object_is_one_block_at_a_time() -> None:
    """One list of blocks for every user of an object ended the wrong one: two tasks sharing a
    serving() were each left with its deadline, an exit stack closed another stack's fake (a review)."""
    block = serving(timeout=3)
    refused: list[str] = []

    async def one(start: float) -> None:
        await asyncio.sleep(start)
        try:
            with block:
                await asyncio.sleep(0.05)
        except RuntimeError as error:
            refused.append(str(error))
        assert get_context().deadline is None

    async def both() -> None:
        await asyncio.gather(one(0), one(0.01))

    asyncio.run(both())
    assert refused == ["this serving() block is open already: call serving(...) again for another one"]
    with block:  # its block ended: it may be entered again
        assert get_context().deadline is not None
    assert get_context().deadline is None


def test_two_threads_entering_one_helper_object_at_once_do_not_both_get_in() -> None:
    """Checked and then taken in two steps, two threads both entered one block: the first exit closed
    the other's, whose own exit then failed (57 of 60 runs with a tiny switch interval: a review)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(20):
            block = serving(timeout=5)
            start = threading.Barrier(2)
            outcomes: list[str] = []

            def enter(block: Any = block, start: threading.Barrier = start, outcomes: list[str] = outcomes) -> None:
                start.wait()
                try:
                    with block:
                        time.sleep(0.01)
                    outcomes.append("in")
                except RuntimeError:
                    outcomes.append("refused")

            threads = [threading.Thread(target=enter) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)
            assert sorted(outcomes) in (["in", "refused"], ["in", "in"])  # one at a time: never both open
            assert block._open is None
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.parametrize("kind", ["generator", "async generator"])
def test_a_helper_refuses_to_decorate_a_generator_function(kind: str) -> None:
    """A generator's body runs as it is iterated, after the call: the block had ended (a review)."""
    if kind == "generator":

        def body() -> Any:
            yield get_context().deadline

    else:

        async def body() -> Any:
            yield get_context().deadline

    with pytest.raises(TypeError, match=r"serving\(\) decorates test functions and methods, not generator functions"):
        serving(timeout=3)(body)


def test_a_helper_over_a_wrapper_of_an_async_def_runs_it_inside_the_block() -> None:
    """A plain decorator between the helper and the ``async def``, or a function marked a coroutine
    function, ran outside the block (a review); a wrapper that returns its coroutine has it awaited
    inside a block; one that runs it itself (``asyncio.run``, ``async_to_sync``) is a sync test, and
    its failure fails it (taken for an async one, it was never awaited and passed: a review)."""
    import functools

    from asgiref.sync import async_to_sync, markcoroutinefunction

    def plainly(function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

        return wrapper

    async def left() -> Any:
        return get_context().priority

    def marked_a_coroutine_function() -> Any:
        return left()

    def returns_a_coroutine() -> Any:
        return left()

    wrapped = serving(priority="low")(plainly(left))
    marked = serving(priority="low")(markcoroutinefunction(marked_a_coroutine_function))  # marks it in place
    assert asyncio.run(wrapped()) is Priority.LOW
    assert asyncio.run(marked()) is Priority.LOW
    hidden = serving(priority="low")(returns_a_coroutine)
    assert asyncio.run(hidden()) is Priority.LOW

    def runs_it(function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(function(*args, **kwargs))

        return wrapper

    class Case(SimpleTestCase):
        @serving(timeout=5)
        @runs_it
        async def test_failing(self) -> None:
            raise AssertionError("the body ran")

        @serving(priority="low")
        @async_to_sync
        async def test_passing(self) -> None:  # no __code__ on AsyncToSync: it crashed the class
            assert get_context().priority is Priority.LOW

    failing = run_test_case(Case, "test_failing")
    assert [str(error).splitlines()[-1] for _, error in failing.failures] == ["AssertionError: the body ran"]
    assert run_test_case(Case, "test_passing").wasSuccessful()
    assert serving(priority="low")(functools.partial(get_context))().priority is Priority.LOW


def test_a_helper_above_staticmethod_or_classmethod_decorates_what_they_hold() -> None:
    class Case:
        @serving(priority="high")
        @staticmethod
        def static() -> Any:
            return get_context().priority

        @serving(priority="high")
        @classmethod
        def of_class(cls) -> Any:
            return get_context().priority

    assert Case.static() is Priority.HIGH
    assert Case().of_class() is Priority.HIGH


def test_the_warning_of_a_helper_never_entered_names_the_fixture_s_method_and_is_an_error_under_w_error() -> None:
    """``contextlib.suppress(Exception)`` swallowed the warning made an error by ``-W error`` (a review),
    and the fixture's method for ``fake_client`` is ``fake()``."""
    code = "from django_aio_request.testing import fake_client\nfake_client('billing')\nprint('went on')\n"
    ran = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.stdout == "went on\n"
    assert "RuntimeWarning: fake_client() was never entered, so it did nothing" in ran.stderr, ran.stderr
    assert "the aio_request fixture's fake() needs no with" in ran.stderr


class UnittestStyle(SimpleTestCase):
    """The same helpers in a Django TestCase, as context managers."""

    @override_settings(
        AIO_REQUEST=billing_settings(),
        ROOT_URLCONF="tests.support.urls_app",
        MIDDLEWARE=["django_aio_request.middleware.AioRequestMiddleware"],
    )
    def test_view_with_a_fake_and_a_deadline(self) -> None:
        with fake_client("billing") as billing:
            billing.route("invoices/5", reply(404, body="no such invoice"))
            answer = self.client.get("/invoice/5/", headers=request_headers(timeout=1.5, priority="low"))

        assert answer.json()["status"] == 404
        [call] = billing.calls
        assert call.priority is Priority.LOW
        assert call.timeout is not None
        assert call.timeout <= 1.5


# -0.0 (what round(-0.0001, 2) gives): sent as "-0.0", which the middleware ignored as malformed.
# 1e9 and up: what aio-request also sends for a far timeout ("1000000000.0", "1e+16"), which the
# middleware reads and clamps to MAX_TIMEOUT (it refused them as malformed, and the helper refused them).
@pytest.mark.parametrize(
    "timeout", [999_999_999, 0.25, 5e-05, 1.5e-05, 0, 0.0, -0.0, round(-0.0001, 2), 1e9, 1.5e15, 1e16, 1e300]
)
def test_every_timeout_request_headers_accepts_is_one_the_middleware_reads(timeout: float) -> None:
    from django_aio_request.server.middleware import parse_timeout

    assert parse_timeout(request_headers(timeout=timeout)["X-Request-Timeout"]) == timeout


def test_each_fake_starts_with_a_closed_breaker_even_where_breakers_share_a_cache(settings: Settings) -> None:
    """With CIRCUIT_BREAKER_STATE naming Redis, a fake's breaker counted in Redis under the real
    client's name: a breaker one test tripped stayed open for the next test's fake, and for the real
    clients of every process on that Redis."""
    require_redis()
    endpoint = f"http://billing-{uuid.uuid4().hex[:8]}.test:8080/api/"  # keys of its own in Redis
    billing = billing_settings()["CLIENTS"]["billing"]
    settings.AIO_REQUEST = {
        "CIRCUIT_BREAKER_STATE": "shared",
        "CLIENTS": {"billing": {**billing, "ENDPOINT": endpoint}},
    }
    with fake_client("billing") as tripped:
        tripped.route("invoices/*", reply(500))
        assert [view(f"/invoice/{n}/")["status"] for n in range(3)] == [502] * 3
        time.sleep(0.5)  # a shared breaker's thread writes the open circuit to Redis every 0.1 s
    with fake_client("billing") as fresh:
        fresh.route("invoices/*", reply(200))
        statuses = []
        for n in range(4):
            statuses.append(view(f"/invoice/{n}/")["status"])
            time.sleep(0.25)  # time for a shared breaker to read the block back
    assert statuses == [200] * 4


def test_a_fake_of_an_endpoint_without_a_path_records_paths_relative_to_it(settings: Settings) -> None:
    settings.AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://billing.test:8080"}}}
    with fake_client("billing") as billing:
        billing.route("invoices/7", reply(200))
        with clients["billing"].request(get("invoices/{id}", path_parameters={"id": 7})) as response:
            assert response.status == 200
    assert [c.path for c in billing.calls] == ["invoices/7"]


@pytest.mark.parametrize("endpoint", ["http://billing.test:8080//api/", "http://billing.test:8080/api/./v1/"])
def test_a_fake_of_an_endpoint_whose_path_the_join_tidies_records_paths_relative_to_it(
    settings: Settings, endpoint: str
) -> None:
    """Before: the fake recorded "api/invoices/7" and "api/v1/invoices/7" (the endpoint's path as
    written, not as calls carry it), so the route never matched and the call raised UnexpectedCallError."""
    settings.AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": endpoint}}}
    with fake_client("billing") as billing:
        billing.route("invoices/7", reply(200))
        with clients["billing"].request(get("invoices/{id}", path_parameters={"id": 7})) as response:
            assert response.status == 200
    assert [c.path for c in billing.calls] == ["invoices/7"]


def test_helpers_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="priority must be 'high', 'normal' or 'low'"):
        request_headers(priority="urgent")
    with pytest.raises(ValueError, match="finite number"):
        request_headers(timeout=float("inf"))
    with pytest.raises(TypeError, match="number of seconds"):
        request_headers(timeout="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay must be >= 0"):
        reply(delay=-1)
    with pytest.raises(TypeError, match="Reply objects"):
        FakeDownstream(ENDPOINT).route("x", 200)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no client 'payments'"), fake_client("payments"):
        pass


def test_helpers_refuse_a_priority_of_another_type_and_a_delay_that_is_no_number(
    aio_request: AioRequestFixture,
) -> None:
    """A priority that is no string (an int, an enum of the app's own) is a TypeError, not an
    AttributeError from inside the parsing; a NaN delay, which compares false with everything and
    would answer at once, is refused as a negative one is."""
    for priority in (1, Priority.HIGH.value.encode(), True):
        for call in (
            lambda: request_headers(priority=priority),  # type: ignore[arg-type]  # noqa: B023
            lambda: serving(priority=priority).__enter__(),  # type: ignore[arg-type]  # noqa: B023
            lambda: aio_request.serving(priority=priority),  # type: ignore[arg-type]  # noqa: B023
            lambda: aio_request.headers(priority=priority),  # type: ignore[arg-type]  # noqa: B023
        ):
            with pytest.raises(TypeError, match="priority must be 'high', 'normal', 'low' or a Priority"):
                call()
    assert request_headers(priority=Priority.LOW) == {"X-Request-Priority": "low"}
    for make in (reply, network_error):
        with pytest.raises(ValueError, match="delay must be >= 0, not nan"):
            make(delay=float("nan"))
        with pytest.raises(ValueError, match="delay must be >= 0, not -inf"):
            make(delay=float("-inf"))
        with pytest.raises(TypeError, match="delay must be a number of seconds, not '1'"):
            make(delay="1")  # type: ignore[arg-type]
        assert make(delay=1).delay == 1


@responses_lib.activate
def test_responses_checks_the_request_built() -> None:
    """docs/testing.md's `responses` example: the real client and transport, requests' adapter mocked."""
    responses_lib.get(ENDPOINT + "invoices/7?expand=lines", json={"id": 7})

    with (
        serving(timeout=2.0, priority="low"),
        clients["billing"].request(
            get("invoices/{id}", path_parameters={"id": 7}, query_parameters={"expand": "lines"})
        ) as response,
    ):
        assert response.json() == {"id": 7}

    [sent] = responses_lib.calls
    assert sent.request.headers["X-Request-Priority"] == "low"
    # What is left of the 2 s: building the client first took 0.72 s once on a loaded machine.
    assert 0.5 < float(sent.request.headers["X-Request-Timeout"]) <= 2.0


@responses_lib.activate
def test_a_form_body_matches_responses_body_matcher_not_its_urlencoded_params_matcher() -> None:
    """What docs/testing.md says of responses' matchers: the body reaches it as bytes."""
    from responses import matchers

    form = {"SAFE_METHOD_STRATEGY": {"NAME": "single"}, "UNSAFE_METHOD_STRATEGY": {"NAME": "single"}}
    with override_settings(AIO_REQUEST=billing_settings(**form)):
        params = responses_lib.post(ENDPOINT + "pay", match=[matchers.urlencoded_params_matcher({"k": "v"})])
        with clients["billing"].request(dar.post("pay", body=b"k=v")) as response:
            assert response.status == 489  # no match: responses' ConnectionError
        body = responses_lib.post(ENDPOINT + "pay", match=[matchers.body_matcher("k=v")])
        with clients["billing"].request(dar.post("pay", body=b"k=v")) as response:
            assert response.status == 200
    assert (params.call_count, body.call_count) == (0, 1)


@responses_lib.activate
def test_responses_network_errors_are_489() -> None:
    """With `responses`, a mocked ConnectionError and an unregistered URL both reach the code as a 489."""
    settings_free = {"SAFE_METHOD_STRATEGY": {"NAME": "single"}}
    with override_settings(AIO_REQUEST=billing_settings(**settings_free)):
        responses_lib.get(ENDPOINT + "invoices/1", body=requests.ConnectionError("refused"))
        with clients["billing"].request(get("invoices/1")) as refused:
            pass
        with clients["billing"].request(get("invoices/2")) as unregistered:
            pass

    assert refused.status == unregistered.status == 489


@responses_lib.activate
def test_responses_unexpected_calls_retried_by_the_default_strategy_may_open_the_breaker() -> None:
    """docs/testing.md: an unregistered URL under ``responses`` is a 489 to a single attempt; a GET's
    default strategy retries it, and a breaker whose MINIMUM_THROUGHPUT its own attempts reach opens
    on them: the call's answer is then the open circuit's 502, and the circuit stays open."""
    with override_settings(AIO_REQUEST=billing_settings()):  # the default GET strategy, BREAKER's 2 calls
        with clients["billing"].request(get("invoices/3")) as first:
            pass
        with clients["billing"].request(get("invoices/4")) as second:
            pass
    assert first.status == 502
    assert second.status == 502  # the next call, the circuit still open
    assert len(responses_lib.calls) == 2  # the attempts that reached requests before it opened


def _failing_callback(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
    return 200, {}, str(1 // 0)


@responses_lib.activate
def test_a_responses_callback_that_raises_is_a_489_whose_warning_says_where(caplog: pytest.LogCaptureFixture) -> None:
    """docs/testing.md: a callback of the test's that raises is, to the client, an error raised below
    requests' ``send``, taken for a failure of the attempt (a 489), as a bug of an adapter of the
    application's own is; the test sees the 489, and the warning says where the error was raised."""
    caplog.set_level(logging.WARNING, logger="django_aio_request")
    with override_settings(AIO_REQUEST=billing_settings(SAFE_METHOD_STRATEGY={"NAME": "single"})):
        responses_lib.add_callback(responses_lib.GET, ENDPOINT + "invoices/5", callback=_failing_callback)
        with clients["billing"].request(get("invoices/5")) as response:
            pass
    assert response.status == 489
    line = _failing_callback.__code__.co_firstlineno + 1
    warned = [r.getMessage() for r in caplog.records if "failed after" in r.getMessage()]
    where = f"ZeroDivisionError, raised in {__name__}, line {line}, in _failing_callback"
    assert [where in w for w in warned] == [True]


def test_serving_keeps_what_it_is_not_given() -> None:
    with serving(timeout=2.0) as outer, serving(priority="low") as inner:
        assert inner.deadline is outer.deadline
        assert inner.priority is Priority.LOW
    with serving(priority="high"), serving(timeout=1.0) as inner:
        assert inner.priority is Priority.HIGH
        assert inner.deadline is not None
        assert 0.9 < inner.deadline.timeout <= 1.0


_DEADLINE_PROJECT_TESTS = """
import time

import pytest
from django.contrib.contenttypes.models import ContentType


def test_1_a_job_under_a_deadline_names_the_fixture_first(aio_request, transactional_db):
    aio_request.serving(timeout=0.2)
    ContentType.objects.create(app_label="leak", model="transactional")
    time.sleep(0.3)  # the deadline passes after the work is done: the flush at teardown must still run


def test_2_starts_from_an_empty_database(transactional_db):
    assert not ContentType.objects.filter(app_label="leak").exists()


def test_3_the_same_with_db(aio_request, db):
    aio_request.serving(timeout=0.2)
    ContentType.objects.create(app_label="leak", model="rolled_back")
    time.sleep(0.3)


def test_4_starts_from_an_empty_database(db):
    assert not ContentType.objects.filter(app_label="leak").exists()


def test_5_the_fixture_alone_gives_no_database_access(aio_request):
    with pytest.raises(RuntimeError, match="Database access not allowed"):
        ContentType.objects.exists()
"""


def test_the_fixture_s_deadline_ends_before_pytest_django_s_database_teardown(tmp_path: Path) -> None:
    """A deadline set with ``aio_request.serving()`` lasts until the end of the test, and not through
    pytest-django's database teardown, also when the test names ``aio_request`` before
    ``transactional_db`` / ``db``: with DATABASE_STATEMENT_TIMEOUT the flush (or rollback) would be
    refused under the expired deadline, and the rows left for the next test. The fixture alone still
    gives no database access. A pytest project of its own, on the real PostgreSQL server."""
    reason = postgres.unreachable()
    if reason is not None:
        if postgres.in_ci():
            pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run, not be skipped)", pytrace=False)
        pytest.skip(reason)
    from django.conf import settings

    server = settings.DATABASES[postgres.ALIAS]
    name = f"aio_fixture_{uuid.uuid4().hex[:12]}"  # pytest-django creates and drops test_<name>
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        **{key: server[key] for key in ("USER", "PASSWORD", "HOST", "PORT")},
        "OPTIONS": {"connect_timeout": 3},
    }
    settings_text = f"""
        SECRET_KEY = "x"
        INSTALLED_APPS = ["django.contrib.contenttypes", "django_aio_request"]
        DATABASES = {{"default": {database!r}}}
        AIO_REQUEST = {{"SERVICE_NAME": "jobs", "DATABASE_STATEMENT_TIMEOUT": True}}
        USE_TZ = True
        """
    done = run_project_tests(tmp_path, settings_text, _DEADLINE_PROJECT_TESTS)
    assert "5 passed" in done.stdout, done.stdout[-4000:]


def billing_project_settings() -> str:
    """The settings module of a project of its own whose one client is billing (run_project_tests)."""
    return f"""
        SECRET_KEY = "x"
        INSTALLED_APPS = ["django_aio_request"]
        AIO_REQUEST = {billing_settings()!r}
        """


def run_project_tests(tmp_path: Path, settings_text: str, tests_text: str) -> subprocess.CompletedProcess[str]:
    """pytest run in a project of its own (these settings, these tests), as a user's project runs
    it: the plugin loaded by its entry point, no xdist. Fails on a failure or an error."""
    (tmp_path / "project_settings.py").write_text(textwrap.dedent(settings_text))
    (tmp_path / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = project_settings\n")
    (tmp_path / "test_project.py").write_text(tests_text)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "error" not in done.stdout, done.stdout[-4000:]
    return done


_LEFTOVERS_PROJECT_TESTS = """
import asyncio
import concurrent.futures
import threading
import time

import pytest
from asgiref.sync import async_to_sync

from django_aio_request import RequestsTransport, clients, get, get_context
from django_aio_request.testing import fake_client, force_breaker, reply


def real_client_untouched():
    assert isinstance(clients["billing"].transport, RequestsTransport), clients["billing"].transport
    overrides = {s.scope: s.override for s in clients["billing"].circuit_breaker.snapshot()}
    assert set(overrides.values()) <= {None}, overrides
    assert get_context().deadline is None, get_context()


@pytest.fixture
def own_fake():
    with fake_client("billing") as fake:  # a project's own fixture, ending after the aio_request fixture
        yield fake


@pytest.fixture
def own_closed():
    with force_breaker("billing", "closed") as client:
        yield client


def test_a_fixture_fake_beside_a_project_fixture_s_fake(aio_request, own_fake):
    aio_request.fake("billing").route("x", reply(404))
    with clients["billing"].request(get("x")) as response:
        assert response.status == 404


def test_a_after_it(aio_request):
    real_client_untouched()


def test_b_a_with_block_around_a_fixture_fake(aio_request):
    with fake_client("billing"):
        aio_request.fake("billing")


def test_b_after_it():
    real_client_untouched()


def test_c_a_fixture_force_beside_a_project_fixture_s(aio_request, own_closed):
    aio_request.force_breaker("billing", "open")
    with clients["billing"].request(get("x")) as response:
        assert response.status == 502


def test_c_after_it():
    real_client_untouched()


def test_d_serving_from_asyncio_run(aio_request):
    async def job():
        aio_request.serving(timeout=1.0, priority="low")
        return get_context().priority.value

    assert asyncio.run(job()) == "low"


def test_d_serving_from_async_to_sync(aio_request):
    async def job():
        aio_request.serving(timeout=0.2)

    async_to_sync(job)()
    assert get_context().deadline is not None  # asgiref brings the change back to the test


def test_d_serving_from_a_thread(aio_request):
    thread = threading.Thread(target=lambda: aio_request.serving(timeout=0.2))
    thread.start()
    thread.join()


def test_d_after_them(aio_request):
    time.sleep(0.3)  # past the 0.2 s set above: a deadline left behind would answer this call 408
    real_client_untouched()
    fake = aio_request.fake("billing")
    fake.route("x", reply(200))
    with clients["billing"].request(get("x")) as response:
        assert (response.status, len(fake.calls)) == (200, 1)


POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # a project's worker pool: outlives its tests


def test_e_serving_from_a_pool_thread_that_outlives_the_test(aio_request):
    def job():
        aio_request.serving(timeout=0.2, priority="low")
        return get_context().priority.value

    assert POOL.submit(job).result() == "low"


def test_e_after_it(aio_request):
    time.sleep(0.3)  # past the 0.2 s set above in the pool's thread: left there, it answered 408
    seen = POOL.submit(get_context).result()
    assert (seen.deadline, seen.priority) == (None, None), seen
    fake = aio_request.fake("billing")
    fake.route("x", reply(200))

    def call():
        with clients["billing"].request(get("x")) as response:
            return response.status

    assert (POOL.submit(call).result(), len(fake.calls)) == (200, 1)
"""


def test_nothing_a_test_set_is_left_for_the_next_however_its_blocks_end(tmp_path: Path) -> None:
    """A project's pytest run: fakes and forced breakers whose blocks (the fixture's, a project
    fixture's, a ``with``) end in another order than they began, and the fixture's ``serving()``
    called from ``asyncio.run``, ``async_to_sync`` and a thread. Before: the later tests got a closed
    fake instead of the real client, the breaker still forced, and ``ValueError`` ("created in a
    different Context") at teardown, with async_to_sync's deadline left set for every later test."""
    done = run_project_tests(tmp_path, billing_project_settings(), _LEFTOVERS_PROJECT_TESTS)
    assert "12 passed" in done.stdout, done.stdout[-4000:]


_LONG_SESSION_TESTS = """
import concurrent.futures

import pytest

from django_aio_request import get_context

POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # a project's worker, outliving every test


@pytest.mark.parametrize("n", range(1100))
def test_a_job_in_the_pool(aio_request, n):
    def job():
        aio_request.serving(timeout=30, priority="low")
        return get_context().priority.value

    assert POOL.submit(job).result() == "low"


def test_after_them_all():
    seen = POOL.submit(get_context).result()
    assert (seen.deadline, seen.priority) == (None, None), seen
"""


def test_the_fixture_s_serving_in_a_pool_worker_of_a_long_session_leaves_nothing(tmp_path: Path) -> None:
    """A worker that outlives the tests, given the fixture's ``serving()`` in each: each context kept
    the one before it, ended, a chain as long as the session, walked at every read, and the
    992nd test raised RecursionError (a review)."""
    done = run_project_tests(tmp_path, billing_project_settings(), _LONG_SESSION_TESTS)
    assert "1101 passed" in done.stdout, done.stdout[-4000:]


def test_reply_checks_its_status_and_body_and_keeps_a_content_type_given_in_any_case() -> None:
    with pytest.raises(TypeError, match="status must be an int, not str '503'"):
        reply("503")  # type: ignore[arg-type]  # failed later, inside the client's classifier
    with pytest.raises(ValueError, match="from 100 to 599, not 2000"):
        reply(2000)
    with pytest.raises(TypeError, match="body must be bytes or str, not int"):
        reply(body=5)  # type: ignore[arg-type]  # was five NUL bytes
    problem = reply(200, json={"a": 1}, headers={"content-type": "application/problem+json"})
    assert dict(problem.headers) == {"content-type": "application/problem+json"}  # was replaced
    assert dict(reply(json=[]).headers) == {"Content-Type": "application/json"}


def test_a_path_with_spaces_or_accents_is_routed_and_found_as_written(aio_request: AioRequestFixture) -> None:
    """The call's path is recorded as sent (percent-encoded); a route and calls_to() written as the
    test reads the path match it too (they raised UnexpectedCallError / found nothing)."""
    billing = aio_request.fake("billing")
    billing.route("files/rapport été", reply(200, body="exact"))
    billing.route("notes/a b*", reply(200, body="prefix"))
    with clients["billing"].request(get("files/{name}", path_parameters={"name": "rapport été"})) as response:
        assert response.read() == b"exact"
    with clients["billing"].request(get("notes/{name}", path_parameters={"name": "a b c"})) as response:
        assert response.read() == b"prefix"
    (call,) = billing.calls_to("files/rapport été")
    assert call.path == "files/rapport%20%C3%A9t%C3%A9"
    assert billing.calls_to(call.path) == [call]


def test_a_literal_url_is_recorded_and_routed_as_sent_percent_encoded(
    aio_request: AioRequestFixture, server: LoopbackServer, settings: Settings
) -> None:
    """A URL written whole (an f-string: ``get(f"files/{name}")``) is percent-encoded on its way out,
    as requests prepares it: the fake recorded ``files/100%`` and ``q=a b`` where the server gets
    ``files/100%25`` and ``q=a%20b``, and a route written as the server sees the path found no call
    (a review). Checked against what a real server on 127.0.0.1 received for the same calls."""
    literal = [get("files/rapport été"), get("search/100%"), get("s?q=a b&x=é")]
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url.rstrip("/") + "/api/")
    server.route("/api/*", lambda handler: handler.reply(200, b"real"))
    for request in literal:
        with clients["billing"].request(request) as response:
            assert response.status == 200
    sent = [received.path for received in server.received()]
    billing = aio_request.fake("billing")
    billing.route("files/rapport été", reply(200, body="decoded"))  # as the test reads it
    billing.route("search/100%25", reply(200, body="encoded"))  # as the server sees it
    billing.route("s", reply(200))
    for request in literal:
        with clients["billing"].request(request) as response:
            assert response.status == 200
    assert [f"/api/{c.path}" + (f"?{c.query}" if c.query else "") for c in billing.calls] == sent
    assert sent[1] == "/api/search/100%25"
    assert billing.calls[2].query == "q=a%20b&x=%C3%A9"
    # requests decodes what needs no encoding ("%7E" is "~"): a route written as the URL was still answers
    billing.route("users/%7Ealice/*", reply(200, body="written"))
    with clients["billing"].request(get("users/%7Ealice/photos/1")) as response:
        assert response.read() == b"written"
    assert billing.calls[-1].path == "users/~alice/photos/1"


def test_recorded_headers_are_read_in_any_case(aio_request: AioRequestFixture) -> None:
    billing = aio_request.fake("billing")
    billing.route("x", reply(200))
    with clients["billing"].request(get("x")) as response:
        assert response.status == 200
    (call,) = billing.calls
    assert call.headers["x-request-timeout"] == call.headers["X-Request-Timeout"]
    assert call.headers.get("x-service-name") == "orders"


def test_a_timeout_too_large_for_a_float_is_a_value_error() -> None:
    for call in (lambda: request_headers(timeout=10**400), lambda: serving(timeout=10**5000).__enter__()):
        with pytest.raises(ValueError, match="finite number of seconds"):  # was OverflowError
            call()


def test_an_attempt_cancelled_before_it_is_sent_is_not_recorded_like_a_real_transport() -> None:
    # The fake recorded it and answered an EmptyResponse 499 that a learning delays provider took
    # for a ~0 s latency; the real transport sends nothing and says so (UnsentResponse).
    from django_aio_request.core.cancellation import Cancellation
    from django_aio_request.core.response import UnsentResponse

    fake = FakeDownstream("http://billing.test/")
    fake.route("invoices", reply(200))
    cancelled = Cancellation()
    cancelled.cancel()
    response = fake.send(fake.endpoint, get("invoices"), 1.0, cancelled)
    assert (response.status, type(response)) == (499, UnsentResponse)
    assert fake.calls == []
    assert fake.send(fake.endpoint, get("invoices"), 1.0, Cancellation()).status == 200
    assert len(fake.calls) == 1


def test_a_kept_reference_reaches_a_fake_while_threads_fake_its_name_at_once(
    settings: Settings, server: LoopbackServer
) -> None:
    """One block's end put the real client back and then cleared its stand-in, while another thread's
    block had made a fake and set it: a fake under the name, and the kept client calling the network
    (a review: 6-111 of 900 blocks, at a 1 µs switch interval)."""
    settings.AIO_REQUEST = billing_settings(ENDPOINT=server.url)
    kept = clients["billing"]
    reached: list[str] = []
    interval = sys.getswitchinterval()

    def faking() -> None:
        for _ in range(300):
            with fake_client("billing", allow_unexpected=True):
                try:
                    with kept.request(get("unscripted")):
                        reached.append("network")
                except UnexpectedCallError:
                    reached.append("fake")

    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=faking) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert reached.count("fake") == 900, reached.count("network")
    assert server.received("/unscripted") == []
    assert kept.stand_in is None
    assert clients["billing"] is kept


def test_the_fixture_s_serving_used_as_a_block_says_what_it_is(aio_request: AioRequestFixture) -> None:
    """It lasts until the test ends (docs/testing.md); used with ``with``, it said only that the
    object "does not support the context manager protocol" (a review)."""
    served: Any = aio_request.serving(timeout=1)  # typed Context: a type checker flags the `with` too
    with pytest.raises(TypeError, match=r"until the test ends, not for a block.*testing\.serving"), served:
        pass

    async def in_async_code() -> None:
        async with served:
            pass

    with pytest.raises(TypeError, match="until the test ends, not for a block"):
        asyncio.run(in_async_code())
    assert get_context().deadline is not None  # set all the same, until the test ends

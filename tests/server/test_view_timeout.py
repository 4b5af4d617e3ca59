"""@timeout(seconds): a view's own default deadline; a valid X-Request-Timeout still wins."""

import asyncio
import json
import logging
import math
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from pytest_django.fixtures import Settings

import django_aio_request
from django_aio_request import Deadline, get_context, set_context
from django_aio_request.server.view_timeout import timeout
from tests.server.test_middleware import DEFAULT_TIMEOUT, GETTERS, MIDDLEWARE, asgi_get, server_setting, view_saw
from tests.support import urls_server

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.urls("tests.support.urls_server")

# (path, the view's own timeout) for every way of applying @timeout
DECORATED = [
    ("/timed", 3),  # function
    ("/atimed", 3),  # async function
    ("/class", 3),  # class (wraps dispatch)
    ("/async-class", 3),  # class with async handlers
    ("/method", 3),  # a method of a class
    ("/async-method", 3),  # an async method
    ("/sub-class", 3),  # a subclass of a decorated class
    ("/urls-fn", 4),  # in urls.py: timeout(4)(views.ctx)
    ("/urls-async-fn", 4),  # in urls.py, an async function
    ("/urls-class", 4),  # in urls.py: timeout(4)(PlainView.as_view())
    ("/urls-nested", 4),  # in urls.py around a view decorated with 3: the outermost applies
]
IDS = [path for path, _ in DECORATED]


@pytest.fixture(autouse=True)
def _server_side(settings: Settings) -> None:
    settings.MIDDLEWARE = [MIDDLEWARE]
    settings.AIO_REQUEST = server_setting()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("path", "seconds"), DECORATED, ids=IDS)
def test_without_a_header_the_view_timeout_is_the_deadline(mode: str, path: str, seconds: float) -> None:
    seen = view_saw(GETTERS[mode](path))
    assert seen["source"] == "view"
    assert seconds - 0.5 < seen["timeout"] <= seconds


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("path", "seconds"), DECORATED, ids=IDS)
def test_a_valid_header_wins_over_the_view_timeout(mode: str, path: str, seconds: float) -> None:
    for header, expected in (("10", 10.0), ("1", 1.0), ("1000", 30.0)):  # longer, shorter, clamped
        seen = view_saw(GETTERS[mode](path, {"X-Request-Timeout": header, "X-Request-Priority": "high"}))
        assert (seen["source"], seen["priority"]) == ("header", "high")
        assert expected - 0.5 < seen["timeout"] <= expected


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_malformed_header_leaves_the_view_timeout_in_force(mode: str) -> None:
    seen = view_saw(GETTERS[mode]("/timed", {"X-Request-Timeout": "inf"}))
    assert seen["source"] == "view"
    assert 2.5 < seen["timeout"] <= 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_undecorated_views_keep_the_default(mode: str) -> None:
    seen = view_saw(GETTERS[mode]("/ctx"))
    assert seen["source"] == "default"
    assert DEFAULT_TIMEOUT - 0.5 < seen["timeout"] <= DEFAULT_TIMEOUT


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("path", "seconds"), DECORATED, ids=IDS)
def test_without_the_middleware_the_decorator_simply_sets_the_deadline(
    settings: Settings, mode: str, path: str, seconds: float
) -> None:
    settings.MIDDLEWARE = []
    seen = view_saw(GETTERS[mode](path, {"X-Request-Timeout": "10"}))  # nobody reads the header
    assert seen["source"] == "view"
    assert seen["priority"] is None
    assert seconds - 0.5 < seen["timeout"] <= seconds
    assert view_saw(GETTERS[mode]("/ctx"))["timeout"] is None


def test_the_deadline_starts_when_the_view_is_called_and_ends_with_it() -> None:
    request = RequestFactory().get("/")
    assert get_context().deadline is None
    seen = json.loads(urls_server.timed(request).content)
    assert 2.5 < seen["timeout"] <= 3
    assert get_context().deadline is None
    seen = json.loads(asyncio.run(urls_server.atimed(request)).content)
    assert 2.5 < seen["timeout"] <= 3
    with set_context(deadline=Deadline.from_timeout(50)):  # a deadline already in force wins, as the header's
        assert json.loads(urls_server.timed(request).content)["timeout"] > 40


def test_the_deadline_is_restored_when_the_view_raises() -> None:
    @timeout(2)
    def broken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("boom")

    @timeout(2)
    async def abroken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        broken(RequestFactory().get("/"))
    with pytest.raises(RuntimeError):
        asyncio.run(abroken(RequestFactory().get("/")))
    assert get_context().deadline is None


def test_the_decorated_view_keeps_its_identity_and_markers() -> None:
    @timeout(5)
    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        """Docs."""
        return HttpResponse()

    assert view.__name__ == "view"
    assert view.__doc__ == "Docs."
    assert getattr(view, "csrf_exempt", False) is True
    assert getattr(view, "__aio_request_timeout__", None) == 5.0

    wrapped = timeout(5)(urls_server.PlainView.as_view())
    assert getattr(wrapped, "view_class", None) is urls_server.PlainView
    from asgiref.sync import iscoroutinefunction

    assert iscoroutinefunction(timeout(5)(urls_server.AsyncTimedView.as_view()))
    assert iscoroutinefunction(urls_server.atimed)
    assert not iscoroutinefunction(urls_server.timed)
    assert urls_server.AsyncTimedView.view_is_async  # a decorated async method still counts as async
    assert urls_server.AsyncMethodTimedView.view_is_async


def test_decorating_a_class_returns_the_class() -> None:
    class Plain(View):
        def get(self, request: HttpRequest) -> HttpResponse:
            deadline = get_context().deadline
            return HttpResponse(str(deadline.timeout if deadline else None))

    assert timeout(2)(Plain) is Plain
    response = Plain.as_view()(RequestFactory().get("/"))
    assert isinstance(response, HttpResponse)
    assert float(response.content) <= 2


def test_a_class_decorated_again_with_another_timeout_is_refused_and_each_route_gets_its_own_via_as_view() -> None:
    """A class is decorated in place (as Django's method_decorator does): ``timeout(60)(Report)``
    and then ``timeout(2)(Report)`` in urls.py gave every route using Report 2 s, silently."""

    class Report(View):
        def get(self, request: HttpRequest) -> HttpResponse:
            deadline = get_context().deadline
            return HttpResponse(str(deadline.timeout if deadline else None))

    def seconds(view: Any) -> float:
        return float(view(RequestFactory().get("/")).content)

    assert timeout(60)(Report) is Report
    assert timeout(60)(Report) is Report  # the same timeout again: nothing new (a urls.py imported twice)
    with pytest.raises(
        TypeError, match=r"Report is already decorated with @timeout\(60\).*timeout\(2\)\(Report.as_view\(\)\)"
    ):
        timeout(2)(Report)
    export, summary = Report.as_view(), timeout(2)(Report.as_view())
    assert 2 < seconds(export) <= 60
    assert 0 < seconds(summary) <= 2
    assert summary.view_class is Report  # type: ignore[attr-defined]

    class Quarterly(Report):  # a subclass of a decorated class may have its own
        pass

    assert timeout(5)(Quarterly) is Quarterly
    assert 0 < seconds(Quarterly.as_view()) <= 5
    assert 5 < seconds(Report.as_view()) <= 60


@pytest.mark.parametrize(
    ("seconds", "error", "match"),
    [
        (0, ValueError, "positive, finite number of seconds, not 0"),
        (-1, ValueError, "not -1"),
        (math.inf, ValueError, "not inf"),
        (math.nan, ValueError, "not nan"),
        (True, TypeError, "not bool"),
        ("5", TypeError, "not str"),
        (Decimal("5"), TypeError, r"number of seconds \(an int or a float\), not Decimal"),
        (Fraction(1, 2), TypeError, r"\(an int or a float\), not Fraction"),
        (None, TypeError, "not NoneType"),
        # Out of the range AIO_REQUEST's numbers take: the decorator's own message, not OverflowError
        pytest.param(10**400, ValueError, r"takes 1e-06 to 999999999 seconds, not an int of 1329 bits", id="10**400"),
        pytest.param(10**5000, ValueError, r"not an int of 16610 bits", id="10**5000"),  # no str() either
        pytest.param(-(10**400), ValueError, r"positive, finite number of seconds, not an int of 1329", id="-10**400"),
        (1_000_000_000, ValueError, r"takes 1e-06 to 999999999 seconds, not 1000000000"),
        (1e10, ValueError, r"not 10000000000\.0"),
        (1e308, ValueError, r"not 1e\+308"),
        (1e-7, ValueError, r"takes 1e-06 to 999999999 seconds, not 1e-07"),
    ],
)
def test_the_seconds_are_validated_at_decoration_time(seconds: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        timeout(seconds)


def test_the_bounds_of_the_range_are_accepted() -> None:
    for seconds in (999_999_999, 999_999_999.0, 1e-6, 2**20):
        view = timeout(seconds)(lambda request: None)
        assert getattr(view, "__aio_request_timeout__", None) == float(seconds)


def test_forgetting_the_parentheses_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"write @timeout\(5\), not @timeout"):

        @timeout  # type: ignore[arg-type]
        def view(request: HttpRequest) -> HttpResponse:
            return HttpResponse()


def test_only_views_can_be_decorated() -> None:
    class NotAView:
        pass

    with pytest.raises(TypeError, match="NotAView has no dispatch"):
        timeout(1)(NotAView)
    with pytest.raises(TypeError, match="decorates views, not int"):
        timeout(1)(5)  # type: ignore[type-var]


def test_exported_lazily_from_the_package_without_django() -> None:
    assert django_aio_request.timeout is timeout
    code = (
        "import sys, django_aio_request as d\n"
        "view = d.timeout(2)(lambda request: d.get_context().deadline.timeout)\n"
        "assert 1.5 < view(None) <= 2\n"
        "assert not [m for m in sys.modules if m == 'django' or m.startswith('django.')], 'django imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


# CANCEL_ASYNC_VIEWS_ON_TIMEOUT: @timeout's deadline cancels only while the view runs. Through Django's
# ASGIHandler (tests/server/test_middleware.py::asgi_get), with an async middleware below
# AioRequestMiddleware that awaits ?post= seconds after the view returned.

AFTER_VIEW = "tests.support.urls_server.AsyncAfterViewMiddleware"
QUICK = ["/atimed-quick", "/async-class-quick", "/urls-async-slow?sleep=0"]  # @timeout(0.3), answer at once


@pytest.fixture
def cancelling_below(settings: Settings) -> None:
    settings.MIDDLEWARE = [MIDDLEWARE, AFTER_VIEW]
    urls_server.finished.clear()


def with_query(path: str, query: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}{query}"


@pytest.mark.usefixtures("cancelling_below")
@pytest.mark.parametrize("path", QUICK)
def test_a_returned_view_is_not_cancelled_at_its_timeout_while_the_middleware_below_finishes(
    settings: Settings, path: str
) -> None:
    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True)  # TIMEOUT 7 s
    status, _, body, took = asgi_get(with_query(path, "post=0.8"), {})
    assert (status, body) == (200, b"done")  # was 408 at the view's 0.3 s, the view's answer lost
    assert took >= 0.8
    assert urls_server.finished[-1] == "after_view"


@pytest.mark.usefixtures("cancelling_below")
@pytest.mark.parametrize("path", QUICK)
def test_after_the_view_returned_the_requests_own_deadline_cancels_again(settings: Settings, path: str) -> None:
    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True, TIMEOUT=1.0)
    status, _, _, took = asgi_get(with_query(path, "post=3"), {})
    assert status == 408
    assert 0.95 < took < 1.6  # TIMEOUT's 1 s from the request's arrival, neither the view's 0.3 s nor never
    assert "after_view" not in urls_server.finished
    status, _, _, took = asgi_get(with_query(path, "post=3"), {"X-Request-Timeout": "0.6"})
    assert status == 408  # the header's deadline: @timeout did not apply at all
    assert 0.55 < took < 1.0


@pytest.mark.usefixtures("cancelling_below")
@pytest.mark.parametrize("path", ["/atimed-long", "/async-class-long"], ids=["function", "class"])
def test_a_view_given_more_time_than_the_default_is_not_cancelled_after_it_returned(
    settings: Settings, path: str
) -> None:
    # @timeout(1.5) under TIMEOUT 0.5: the view returns at 0.8 s, past the default deadline it was given
    # more time than; the middleware below then finishes under the view's deadline, not a 408 at once.
    # The class (a sync dispatch() returning its async handler's coroutine) was cancelled at TIMEOUT.
    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True, TIMEOUT=0.5)
    status, _, body, took = asgi_get(f"{path}?sleep=0.8&post=0.3", {})
    assert (status, body) == (200, b"done")
    assert took >= 1.1
    assert urls_server.finished == ["atimed_long", "after_view"]
    status, _, _, took = asgi_get(f"{path}?sleep=5", {})
    assert status == 408  # and the view's own deadline still cancels it while it runs
    assert 1.45 < took < 2.1


@pytest.mark.parametrize("path", ["/cached-timed-listing", "/timed-cached-listing"])
def test_a_cached_template_response_of_a_timed_view_is_stored_and_served_from_the_cache(path: str) -> None:
    """cache_page pickles the response from a post-render callback, inside the render @timeout runs
    under its deadline: the closure kept on the response failed every request (PicklingError)."""
    from django.core.cache import cache
    from django.test import Client

    cache.clear()
    urls_server.rendered.clear()
    first, second = Client().get(path), Client().get(path)
    assert (first.status_code, first.content) == (200, b"rendered 1")
    assert (second.status_code, second.content) == (200, b"rendered 1")  # from the cache
    assert urls_server.rendered == [path]


@pytest.mark.usefixtures("cancelling_below")
def test_a_cancelled_view_leaves_no_timer_behind_while_the_middleware_below_cleans_up(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # The view is cancelled at its 0.3 s; on its way out the cancellation goes back to TIMEOUT's 0.5 s,
    # which passes while the middleware below awaits its cleanup: nothing more is cancelled, nothing fails.
    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True, TIMEOUT=0.5)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        status, _, _, took = asgi_get("/atimed-quick?sleep=3&cleanup=0.5", {})
    assert status == 408
    assert 0.75 < took < 1.4
    assert urls_server.finished == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []  # no "Exception in callback"


def test_an_async_view_s_render_has_its_deadline_but_is_answered_when_it_ends(settings: Settings) -> None:
    """An async view given 0.3 s whose TemplateResponse takes 0.8 s to render, with cancelling on:
    the render runs under the view's deadline (what it asks of the database and of clients is bounded
    by it) and, in Django's thread, is not cancelled at it: answered 200 when it ends, as
    docs/server.md says (a review read the docs as promising a 408)."""
    settings.AIO_REQUEST = server_setting(CANCEL_ASYNC_VIEWS_ON_TIMEOUT=True, TIMEOUT=5)
    urls_server.render_deadlines.clear()
    status, _, body, took = asgi_get("/aslow-render?render=0.8", {})
    assert (status, body) == (200, b"row")
    assert 0.8 <= took < 2.0
    [seen] = urls_server.render_deadlines
    assert seen <= 0.3  # the view's, not TIMEOUT's 5 s


def test_a_template_response_renders_under_the_view_s_deadline_and_pickles_after() -> None:
    """The render Django runs after the view sees the view's deadline; the response keeps no
    closure once rendered, so the cache middleware can still pickle it."""
    import pickle

    from django.template import engines
    from django.template.response import TemplateResponse

    seen: list[float] = []

    class Rows:
        def __iter__(self) -> Any:
            deadline = get_context().deadline
            seen.append(math.inf if deadline is None else deadline.timeout)
            return iter(["row"])

    @timeout(3)
    def listing(request: HttpRequest) -> TemplateResponse:
        template = engines["django"].from_string("{% for r in rows %}{{ r }}{% endfor %}")
        return TemplateResponse(request, template, {"rows": Rows()})

    response = listing(RequestFactory().get("/"))
    assert get_context().deadline is None  # no middleware: nothing after the view
    response.render()
    assert response.content == b"row"
    assert 2.5 < seen[0] <= 3
    assert pickle.loads(pickle.dumps(response)).content == b"row"

"""Views that query PostgreSQL under the request's deadline (AIO_REQUEST["DATABASE_STATEMENT_TIMEOUT"]).

Served in the test process (``tests.support.urls_db`` with Django's test client, alias
``postgres``) and by gunicorn and uvicorn (``tests.support.settings_db_server``, where the alias
``postgres`` is the test database too). None of them handles a deadline cancellation: that is the
middleware's job.
"""

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.db import DatabaseError, connections, transaction
from django.db.models import IntegerField
from django.db.models.expressions import RawSQL
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.template.response import TemplateResponse
from django.urls import path

from django_aio_request import Deadline, set_context, timeout
from django_aio_request.server.database import is_deadline_cancellation

ALIAS = "postgres"


def _json(data: object, status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(data), status=status, content_type="application/json")


def sleep_unguarded(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of pg_sleep, with no error handling."""
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [float(request.GET["sleep"])])
    return HttpResponse("slept\n", content_type="text/plain")


async def sleep_async(request: HttpRequest) -> HttpResponse:
    """An async view whose query runs in a thread given the request's context (``sync_to_async``)."""
    await sync_to_async(_sleep)(float(request.GET["sleep"]))
    return HttpResponse("slept\n", content_type="text/plain")


def _sleep(seconds: float) -> None:
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [seconds])


def sql(request: HttpRequest) -> HttpResponse:
    """The application's own statement (``?set=``, e.g. ``SET statement_timeout = 100``), then
    ``?sleep=`` seconds of pg_sleep, in one ``atomic()`` block with ``?atomic=1``.

    Answers what happened: the backend's pid (the same pid is the same connection), how long the
    sleep took, the SQLSTATE of a database error that is not the deadline's (the application's own
    timeout), and the ``statement_timeout`` in force afterwards. A deadline cancellation is raised on.
    """
    connection = connections[ALIAS]
    error = None
    started = time.monotonic()
    try:
        block = transaction.atomic(using=ALIAS) if request.GET.get("atomic") == "1" else contextlib.nullcontext()
        with block, connection.cursor() as cursor:
            if request.GET.get("set"):
                cursor.execute(request.GET["set"])
            started = time.monotonic()
            if request.GET.get("sleep"):
                cursor.execute("SELECT pg_sleep(%s)", [float(request.GET["sleep"])])
    except DatabaseError as failed:
        if is_deadline_cancellation(failed):
            raise
        cause = failed.__cause__
        error = getattr(cause, "sqlstate", None) or type(failed).__name__
    elapsed = time.monotonic() - started
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('statement_timeout')")
        pid, statement_timeout = cursor.fetchone()
    return _json({"pid": pid, "elapsed": elapsed, "error": error, "statement_timeout": statement_timeout})


def iterate(request: HttpRequest) -> HttpResponse:
    """Every group through ``.iterator(chunk_size=10)``, each row costing ``?per_row=`` seconds on
    the server; inside ``atomic()`` with ``?atomic=1`` (else Django declares a WITH HOLD cursor)."""
    slow = RawSQL("length(pg_sleep(%s)::text)", (float(request.GET["per_row"]),), output_field=IntegerField())
    rows = Group.objects.using(ALIAS).annotate(slow=slow).order_by("pk")
    with transaction.atomic(using=ALIAS) if request.GET.get("atomic") == "1" else contextlib.nullcontext():
        names = [group.name for group in rows.iterator(chunk_size=10)]
    return _json({"rows": len(names)})


def iterate_slowly(request: HttpRequest) -> HttpResponse:
    """Every group through ``.iterator(chunk_size=5)``, the view spending ``?per_row=`` seconds of its
    own on each row (the rows come at once): a fetch falls due past the deadline, and is refused, while
    the server-side cursor is open. Inside ``atomic()`` with ``?atomic=1`` (else WITH HOLD)."""
    per_row = float(request.GET["per_row"])
    rows = Group.objects.using(ALIAS).order_by("pk")
    with transaction.atomic(using=ALIAS) if request.GET.get("atomic") == "1" else contextlib.nullcontext():
        count = 0
        for _ in rows.iterator(chunk_size=5):
            time.sleep(per_row)
            count += 1
    return _json({"rows": count})


def write_then_break(request: HttpRequest) -> HttpResponse:
    """In one ``transaction.atomic()`` block: a group named ``?name=`` written, then the first row of
    an ``.iterator()``, ``?pause=`` seconds of the view's own, and a ``break`` (Django closes the
    server-side cursor as the loop lets its generator go)."""
    with transaction.atomic(using=ALIAS):
        Group.objects.using(ALIAS).create(name=request.GET["name"])
        for _ in Group.objects.using(ALIAS).order_by("pk").iterator(chunk_size=5):
            time.sleep(float(request.GET["pause"]))
            break
    return HttpResponse("saved\n", content_type="text/plain")


def write_then_nested_sleep(request: HttpRequest) -> HttpResponse:
    """In one ``transaction.atomic()`` block: a group named ``?name=`` written, then ``?sleep=``
    seconds of pg_sleep in a nested block whose deadline the view catches, Django's savepoint
    pattern; answers whether the deadline said the transaction was lost."""
    with transaction.atomic(using=ALIAS):
        Group.objects.using(ALIAS).create(name=request.GET["name"])
        stopped = _deadline_in_atomic(request)
    return _json({"transaction_lost": None if stopped is None else getattr(stopped, "transaction_lost", None)})


def session_write(request: HttpRequest) -> HttpResponse:
    """Writes to the session, then uses up ``?sleep=`` seconds: SessionMiddleware saves the session
    after the view, in its ``process_response``."""
    request.session["visits"] = int(request.session.get("visits", 0)) + 1
    time.sleep(float(request.GET["sleep"]))
    return HttpResponse("view done\n", content_type="text/plain")


def broken_below(request: HttpRequest) -> HttpResponse:
    """A view whose response breaks an inner middleware for a reason that is not the deadline."""
    response = HttpResponse("view done\n", content_type="text/plain")
    response.break_below = True  # type: ignore[attr-defined]
    return response


def view_bug(request: HttpRequest) -> HttpResponse:
    """A view that fails for a reason that is not the deadline."""
    raise ValueError("a bug of the view")


def own_statement_timeout(request: HttpRequest) -> HttpResponse:
    """The application's own ``statement_timeout`` (100 ms, for this transaction only) stops its
    1 s query: a query_canceled that is the application's error, raised on."""
    with transaction.atomic(using=ALIAS), connections[ALIAS].cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 100")
        cursor.execute("SELECT pg_sleep(1)")
    return HttpResponse("not reached\n", content_type="text/plain")


async def aview_bug(request: HttpRequest) -> HttpResponse:
    """An async view that fails for a reason that is not the deadline."""
    raise ValueError("a bug of the async view")


class InnerMiddleware:
    """A middleware below AioRequestMiddleware: ``?before=`` seconds of pg_sleep before the view,
    and a RuntimeError (not the deadline) after a view that asked for one (``broken_below``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.GET.get("before"):
            with connections[ALIAS].cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", [float(request.GET["before"])])
        response = self.get_response(request)
        if getattr(response, "break_below", False):
            raise RuntimeError("an inner middleware failed after the view")
        if request.GET.get("after"):  # a query after the view, as SessionMiddleware's save
            with connections[ALIAS].cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", [float(request.GET["after"])])
        return response


def python_sleep(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of Python work, no query."""
    time.sleep(float(request.GET["sleep"]))
    return HttpResponse("view done\n", content_type="text/plain")


def python_then_query(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of Python work, then a query."""
    time.sleep(float(request.GET["sleep"]))
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("queried\n", content_type="text/plain")


_in_audit = threading.local()


def _audit(execute: Callable[..., object], sql: str, params: object, many: bool, context: dict[str, Any]) -> object:
    """An application's execute wrapper that runs a statement of its own on the connection before
    each query (guarded against itself: its own statement passes through it too)."""
    if not getattr(_in_audit, "on", False):
        _in_audit.on = True
        try:
            with context["connection"].cursor() as cursor:
                cursor.execute("SELECT set_config('application_name', %s, false)", ["audited"])
        finally:
            _in_audit.on = False
    return execute(sql, params, many, context)


def sleep_audited(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of pg_sleep inside the application's own execute wrapper (``_audit``)."""
    with connections[ALIAS].execute_wrapper(_audit):
        _sleep(float(request.GET["sleep"]))
    return HttpResponse("slept\n", content_type="text/plain")


class _SleepWhenIterated:
    """Rows a template iterates: ``seconds`` of pg_sleep, run only then, as a ListView's queryset."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __iter__(self) -> Iterator[str]:
        _sleep(self.seconds)
        return iter(["slept"])


_ROWS = "{% for row in rows %}{{ row }}{% endfor %}"


def lazy_list(request: HttpRequest) -> TemplateResponse:
    """A TemplateResponse whose query runs when Django renders it, after the view returned."""
    rows = _SleepWhenIterated(float(request.GET["sleep"]))
    return TemplateResponse(request, engines["django"].from_string(_ROWS), {"rows": rows})


async def alazy_list(request: HttpRequest) -> TemplateResponse:
    return lazy_list(request)


def fallback_bug(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of pg_sleep, whose error handler has a bug of its own (``?from_none=1``:
    raised ``from None``)."""
    try:
        _sleep(float(request.GET["sleep"]))
    except DatabaseError:
        if request.GET.get("from_none"):
            raise ValueError("the fallback's own bug") from None
        raise KeyError("the fallback's own bug")  # noqa: B904 - implicitly chained, as such bugs are
    return HttpResponse("slept\n", content_type="text/plain")


def _logged(execute: Callable[..., object], sql: str, params: object, many: bool, context: object) -> object:
    return execute(sql, params, many, context)


def first_query_in_a_wrapper_block(request: HttpRequest) -> HttpResponse:
    """The first query of the thread inside the app's ``execute_wrapper()`` block (the thread's
    connection is opened there), then ``?sleep=`` seconds of pg_sleep outside it."""
    connection = connections[ALIAS]
    with connection.execute_wrapper(_logged), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    _sleep(float(request.GET["sleep"]))
    return HttpResponse("slept\n", content_type="text/plain")


class OuterMiddleware:
    """A middleware above AioRequestMiddleware: ``?outer=`` seconds of pg_sleep after the response,
    under a deadline of its own of 0.2 s."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.GET.get("outer"):
            with set_context(deadline=Deadline.from_timeout(0.2)), connections[ALIAS].cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", [float(request.GET["outer"])])
        return response


def report(request: HttpRequest) -> HttpResponse:
    """docs/database.md's example: ``?sleep=`` seconds of pg_sleep; a deadline cancellation answers
    503, any other database error is raised on."""
    try:
        _sleep(float(request.GET["sleep"]))
    except DatabaseError as error:
        if is_deadline_cancellation(error):
            return HttpResponse("partial report unavailable", status=503)
        raise
    return HttpResponse("slept\n", content_type="text/plain")


def atomic_sleep(request: HttpRequest) -> HttpResponse:
    """A write, then ``?sleep=`` seconds of pg_sleep, in one ``transaction.atomic()`` block."""
    with transaction.atomic(using=ALIAS):
        Group.objects.using(ALIAS).create(name="written in the view")
        _sleep(float(request.GET["sleep"]))
    return HttpResponse("slept\n", content_type="text/plain")


def _deadline_in_atomic(request: HttpRequest) -> DatabaseError | None:
    """``?sleep=`` seconds of pg_sleep in a ``transaction.atomic()`` block: the deadline's error that
    stopped it, or None (any other database error is raised)."""
    try:
        with transaction.atomic(using=ALIAS):
            _sleep(float(request.GET["sleep"]))
    except DatabaseError as error:
        if not is_deadline_cancellation(error):
            raise
        return error
    return None


def _sleep_in_atomic(request: HttpRequest) -> bool:
    """:func:`_deadline_in_atomic`: whether the deadline stopped it."""
    return _deadline_in_atomic(request) is not None


def atomic_fallback(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of pg_sleep in a ``transaction.atomic()`` block; when the deadline stops
    it, a fallback query after the block (which the deadline refuses too: the middleware's 408)."""
    if _sleep_in_atomic(request):
        return _json({"fallback": Group.objects.using(ALIAS).count()})
    return HttpResponse("slept\n", content_type="text/plain")


def nested_fallback(request: HttpRequest) -> HttpResponse:
    """Under ``ATOMIC_REQUESTS``: ``?sleep=`` seconds of pg_sleep in an inner ``transaction.atomic()``
    block, whose deadline is caught; then a query after it (in the outer block), whose deadline is
    answered 503 with ``?catch=1`` (docs/database.md's example) and left to the middleware's 408
    otherwise."""
    _sleep_in_atomic(request)
    try:
        return _json({"after": Group.objects.using(ALIAS).count()})
    except DatabaseError as error:
        if request.GET.get("catch") and is_deadline_cancellation(error):
            return HttpResponse("partial report unavailable", status=503)
        raise


urlpatterns = [
    path("timed-long/", timeout(5)(python_sleep)),
    path("sleep-audited/", sleep_audited),
    path("lazy-list-short/", timeout(0.3)(lazy_list)),
    path("lazy-list-long/", timeout(5)(lazy_list)),
    path("alazy-list-short/", timeout(0.3)(alazy_list)),
    path("sleep-unguarded/", sleep_unguarded),
    path("python-then-query/", python_then_query),
    path("nested-fallback/", nested_fallback),
    path("sleep-async/", sleep_async),
    path("sql/", sql),
    path("iterate/", iterate),
    path("iterate-slowly/", iterate_slowly),
    path("write-then-break/", write_then_break),
    path("write-then-nested-sleep/", write_then_nested_sleep),
    path("session/", session_write),
    path("broken-below/", broken_below),
    path("view-bug/", view_bug),
    path("own-statement-timeout/", own_statement_timeout),
    path("aview-bug/", aview_bug),
    path("fallback-bug/", fallback_bug),
    path("first-query-in-a-wrapper-block/", first_query_in_a_wrapper_block),
    path("report/", report),
    path("atomic-sleep/", atomic_sleep),
    path("atomic-fallback/", atomic_fallback),
]

"""``AioRequestMiddleware``: the deadline and priority of an incoming request, for the whole request.

It reads ``X-Request-Timeout`` and ``X-Request-Priority`` (the wire format shared with aio-request)
and sets them in the context, so every ``clients[...]`` call made while serving the request (from
the view's thread, from hedging workers, from async views and ``sync_to_async``) sends on the time
that is left and the priority. Incoming values are untrusted: anything but a plain decimal number of
seconds and a known priority name is ignored (the defaults apply), counted in a metric and logged
at debug level; a request whose time is already up is answered 408 without running the view.
"""

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from django_aio_request.conf.current import current
from django_aio_request.conf.schema import AioRequestSettings
from django_aio_request.core import headers as h
from django_aio_request.core.context import Context, _context
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.downstream_wait import measure_downstream_wait, stop_measuring
from django_aio_request.core.priority import Priority
from django_aio_request.metrics import server as metrics
from django_aio_request.metrics.prometheus import ENABLED as METRICS_ENABLED
from django_aio_request.server.database import (
    answer_if_deadline_below,
    catch_deadline_below,
    is_deadline_cancellation,
)
from django_aio_request.server.log_text import escaped
from django_aio_request.server.request_thread import after_sync_code
from django_aio_request.server.shedding import Admission, Shedding, shedding_for
from django_aio_request.server.socket_peek import CLIENT_CLOSED_REQUEST, META_SOCKET, hung_up
from django_aio_request.server.view_timeout import ClampedDeadline, DefaultDeadline, _canceller, deadline_answer_headers
from django_aio_request.startup_metrics import export_named_clients_at_zero

__all__ = ["AioRequestMiddleware", "parse_priority", "parse_timeout"]

logger = logging.getLogger(__name__)

META_TIMEOUT = "HTTP_X_REQUEST_TIMEOUT"
META_PRIORITY = "HTTP_X_REQUEST_PRIORITY"
META_SERVICE_NAME = "HTTP_X_SERVICE_NAME"

# A plain decimal number of seconds: "5", "0.25", "12.500". No sign, "inf"/"nan", hex, underscores,
# non-ASCII digits or inner whitespace, all of which float() accepts. At most 9 integer digits (more
# are _BEYOND's, clamped) and 20 decimals (Python's repr of a float, which aio-request sends, has up
# to 17 significant digits).
# One exception to "plain": a single digit with a negative exponent ("5.2e-05"), because that is
# how Python's str() writes a float below 0.0001, so an aio-request caller with almost no time
# left sends it. Its value is always below 10, so it can never overflow or stretch a deadline.
# The exponent is at least 1 ("e-0", "e-00" would let "9.99...9e-0" round up to 10.0).
_TIMEOUT = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,20})?|[0-9](?:\.[0-9]{1,20})?e-(?!0+$)[0-9]{1,3}")
# Longer than any deadline this service allows, in the forms aio-request sends: it writes a caller's
# timeout with Python's str(), "9999999999.999987" for 1e10 s and "1e+16" from 1e16 s on. Read as
# what they say (float() of them, inf for "1e+400") and so clamped to MAX_TIMEOUT: ignored as
# malformed, a caller asking for more than 1e9 s got the 20 s TIMEOUT default where one asking for
# 60 s got MAX_TIMEOUT. The first digit is not 0 ("0000000000.5" is half a second, and junk).
# The exponent is one str() writes, 16 or more: "1e+3" (1000 s) and "1e+0" are junk, not far deadlines.
_BEYOND = re.compile(
    r"[1-9][0-9]{9,19}(?:\.[0-9]{1,20})?|[1-9](?:\.[0-9]{1,20})?e\+(?:1[6-9]|[2-9][0-9]|[1-9][0-9]{2})"
)
_MAX_INTEGER_DIGITS, _MAX_DECIMALS = 9, 20  # as in _TIMEOUT
_MAX_LENGTH = 30  # the longest value _TIMEOUT accepts: longer junk is refused before the regex sees it
_PRIORITIES = {p.value: p for p in Priority}
_OWS = " \t"  # RFC 9110 optional whitespace around a field value; servers usually strip it already


# The values parse_timeout() accepted, and their seconds: a request carrying one of them again is
# answered by one dictionary look-up, where checking and converting the text cost the WSGI path
# about a quarter of what the middleware adds to a request (cold code inside a Django request: see
# docs/benchmarks.md). Callers repeat values: this package's client sends the time left to the
# millisecond, and a caller given a fixed timeout sends nearly the same one every time. A longer
# value (aio-request sends a float's repr, "4.999873523011") hardly ever comes again: it costs one
# failed look-up and is not kept. Bounded: emptied when full, so a peer sending new values cannot
# make it grow. Only accepted values are kept, so junk is never a key; whole operations on a dict
# are atomic, so threads share it.
_ACCEPTED: dict[str, float] = {}
_ACCEPTED_MAX = 1024
_REMEMBERED_LENGTH = 10  # "999999.999": a float's repr ("4.999873523011") is not kept, it would not come again


def parse_timeout(raw: str) -> float | None:
    """Seconds named by an ``X-Request-Timeout`` value, or None when it is not a plain decimal number
    (nor one of the forms aio-request writes a far longer timeout in: ``_BEYOND``, to be clamped)."""
    seconds = _ACCEPTED.get(raw)
    if seconds is not None:
        return seconds
    value = raw.strip(_OWS)
    if len(value) > _MAX_LENGTH or (_TIMEOUT.fullmatch(value) is None and _BEYOND.fullmatch(value) is None):
        return None
    return _remember(raw, float(value))


def _remember(raw: str, seconds: float) -> float:
    if len(raw) <= _REMEMBERED_LENGTH:
        if len(_ACCEPTED) >= _ACCEPTED_MAX:
            _ACCEPTED.clear()
        _ACCEPTED[raw] = seconds
    return seconds


def parse_priority(raw: str) -> Priority | None:
    """The priority named by an ``X-Request-Priority`` value (ASCII, any case), or None."""
    exact = _PRIORITIES.get(raw)  # what senders send: "high", "normal", "low"
    if exact is not None:
        return exact
    value = raw.strip(_OWS)
    if not value.isascii():
        return None
    return _PRIORITIES.get(value.lower())


def _malformed(header: str, raw: str) -> None:
    metrics.server_malformed_headers.labels(header=header).inc()
    # Only this header's value, truncated and escaped by repr: never other headers (cookies, auth).
    logger.debug("ignored a malformed %s header: %.80r", header, raw)


def _unlogged(status: int, headers: dict[str, str] | None = None) -> HttpResponse:
    """An answer made before the view, counted in a metric and kept out of Django's ``django.request``
    log: one line per such request (a 408 for a spent deadline, a shed 503) flooded the logs exactly
    when callers retried or the process was overloaded."""
    response = HttpResponse(status=status, headers=headers)
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def _rejected(reason: str) -> HttpResponse:
    metrics.server_rejected.labels(reason=reason).inc()  # aio_request_server_rejected_total
    return _unlogged(408, {h.X_DO_NOT_RETRY: "1"})


def _shed(priority: Priority, admission: Admission) -> HttpResponse:
    """The 503 of a request load shedding refused (``AIO_REQUEST["SHEDDING"]``)."""
    metrics.shed(priority.value, admission.reason or "capacity")
    response = _unlogged(503, {"Retry-After": str(admission.retry_after)})  # aio_request_server_shed_total
    if admission.do_not_retry:
        response[h.X_DO_NOT_RETRY] = "1"
    return response


def _caller_left(request: HttpRequest) -> HttpResponse:
    """The answer to a request whose caller went away while it waited for a slot: recorded as the 499
    the async path records (nobody reads it), and not in Django's error log."""
    logger.debug("its caller went away while it waited for a slot: %s %s", request.method, escaped(request.path))
    return _unlogged(CLIENT_CLOSED_REQUEST)


def _policed(shedding: Shedding, request: HttpRequest, context: Context) -> Context:
    """The context with the priority the caller may claim (``SHEDDING["PRIORITY_POLICY"]``)."""
    policy = shedding.policy
    if policy is None:
        return context
    claimed = cast(Priority, context.priority)  # _begin always sets both
    allowed = policy(request, claimed)
    return context if allowed is claimed else Context(context.deadline, allowed)


async def _apoliced(shedding: Shedding, request: HttpRequest, context: Context) -> Context:
    """:func:`_policed` on the async path: a callable policy runs as Django would run it (in a
    thread if it is sync, so that it may use the ORM; awaited if it is ``async def``)."""
    apolicy = shedding.apolicy
    if apolicy is None:
        return _policed(shedding, request, context)
    claimed = cast(Priority, context.priority)  # _begin always sets both
    allowed = await apolicy(request, claimed)
    return context if allowed is claimed else Context(context.deadline, allowed)


def _judged(context: Context) -> float:
    """The deadline load shedding judges a request by: its caller's (``X-Request-Timeout``), or none.

    Without the header the deadline in the context is ``TIMEOUT``'s, a default the view's
    ``@timeout`` replaces once the view is called, and nobody waits for it: judged by it, a request
    for a view given 60 s was refused at once as unservable in time (503, ``X-Do-Not-Retry``)
    whenever ``TIMEOUT`` was shorter than a request takes here. With no deadline the limiter lets it
    wait up to ``QUEUE_TIMEOUT`` and never refuses it with ``X-Do-Not-Retry``.
    """
    deadline = cast(Deadline, context.deadline)  # _begin always sets one
    return math.inf if type(deadline) is DefaultDeadline else deadline.expires_at


def _observe(request: HttpRequest, response: HttpResponseBase, conf: AioRequestSettings, started: float) -> None:
    """``aio_request_server_latency``: labelled by caller, method, URL pattern (never the raw path) and status."""
    _observe_status(request, response.status_code, conf, started)


def _observe_status(request: HttpRequest, status: int, conf: AioRequestSettings, started: float) -> None:
    if not METRICS_ENABLED:
        return
    match = request.resolver_match
    route = metrics.UNMATCHED_ROUTE if match is None else match.route
    service = request.META.get(META_SERVICE_NAME)
    elapsed = time.monotonic() - started
    observation = (service, request.method, route, status, conf.known_services, elapsed)
    metrics.server_observations.add(observation)


def _text(value: object) -> str | None:
    """A header's value from ``request.META``: servers put text there; Django's test client puts
    whatever a test passed (``headers={"X-Request-Timeout": 0.5}``), which then reads as its text."""
    return value if value is None or isinstance(value, str) else str(value)


def _begin(request: HttpRequest, conf: AioRequestSettings, now: float) -> HttpResponse | Context:
    """The request's deadline and priority, or the 408 to answer at once; ``now`` is ``time.monotonic()``."""
    meta = request.META
    priority = conf.priority
    raw = _text(meta.get(META_PRIORITY))
    if raw is not None:
        parsed = parse_priority(raw)
        if parsed is None:
            _malformed(h.X_REQUEST_PRIORITY, raw)
        else:
            priority = parsed
    raw = _text(meta.get(META_TIMEOUT))
    if raw is not None:
        seconds = parse_timeout(raw)
        if seconds is None:
            _malformed(h.X_REQUEST_TIMEOUT, raw)
        elif seconds == 0:
            # "0", "0.000": the caller's deadline has passed. "1e-400" is some time left, too little
            # for a float: counted as the low timeout it is.
            return _rejected("low_timeout" if raw.strip(_OWS).partition("e")[0].strip("0.") else "expired")
        elif seconds < conf.low_timeout_threshold:
            return _rejected("low_timeout")
        elif seconds <= conf.max_timeout:  # equal: the caller's own deadline, not cut (no X-Do-Not-Retry)
            # Deadline(...) rather than Deadline.from_timeout(): the value is known finite and positive.
            return Context(Deadline(now + seconds), priority)
        else:
            return Context(ClampedDeadline(now + conf.max_timeout), priority)
    # The default deadline has its own type: that is how @timeout knows it may replace it.
    return Context(DefaultDeadline(now + conf.timeout), priority)


class _Canceller:
    """Cancels the request's task at the deadline, if the view being run then is an async view.

    A sync view (run in a thread by ``sync_to_async``) cannot be stopped: cancelling the task would
    answer while the view goes on in its thread, so it is left to finish. ``@timeout`` on an async
    view moves the cancellation to the view's deadline with :meth:`reschedule` while the view runs,
    and back with :meth:`view_returned`: to the request's own deadline (the header's or the default),
    or the view's if that is later, so the middleware below is never cancelled at a deadline that was
    only the view's, nor at the default one a view given more time has outlived.
    """

    __slots__ = ("_deadline", "_handle", "_loop", "_request", "_timeout")

    RECHECK = 0.01  # the view was not resolved yet at the deadline: look again this much later

    def __init__(self, request: HttpRequest, timeout: asyncio.Timeout, deadline: Deadline) -> None:
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._timeout = timeout
        self._deadline = deadline  # the request's own
        self._handle: asyncio.TimerHandle | None = None

    def reschedule(self, deadline: Deadline) -> None:
        self.disarm()
        self._handle = self._loop.call_later(deadline.timeout, self._fire)

    def view_returned(self, deadline: Deadline) -> None:
        own = self._deadline
        self.reschedule(deadline if deadline.expires_at > own.expires_at else own)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        if self._timeout.expired():
            return  # cancelling already (a view_returned() on the way out of the cancelled view moved the timer)
        match = self._request.resolver_match
        if match is None:  # still before URL resolution (slow middleware): the view will start late
            self._handle = self._loop.call_later(self.RECHECK, self._fire)
        elif iscoroutinefunction(match.func):
            self._timeout.reschedule(self._loop.time())  # the timeout cancels the task now


class AioRequestMiddleware:
    """Sets the deadline and priority of each request from its headers (see docs/server.md).

    Place it near the top of ``MIDDLEWARE`` (right after ``SecurityMiddleware``) so the deadline
    covers the other middleware's work too and a request with no time left is refused cheaply.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        # A deadline exceeded below (inner middleware, signals) answers 408, not Django's 500.
        self.get_response = catch_deadline_below(get_response)
        self._get_response = get_response  # the sync path of __call__ does what catch_deadline_below adds
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        if not apps.is_installed("django_aio_request"):
            # Without the app the middleware and the clients work, and nothing says what is missing:
            # no checks (`manage.py check` passed a typo), no database bound (a 3 s query ran in full
            # at a 1 s deadline), no breaker publisher. Said at startup instead.
            raise ImproperlyConfigured(
                "AioRequestMiddleware needs 'django_aio_request' in INSTALLED_APPS: without it its checks,"
                " the database bound (DATABASE_STATEMENT_TIMEOUT) and the admin's circuit breakers do not run"
            )
        # Invalid AIO_REQUEST fails at startup, not on every request; valid, the counters of its
        # clients are exported at 0 before any is looked up (startup_metrics.py).
        export_named_clients_at_zero(current.settings)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A query the database cancelled at the deadline (see docs/database.md) answers 408, not 500."""
        if not is_deadline_cancellation(exception):
            return None
        metrics.server_database_cancelled.inc()
        logger.debug("a query ran out of the deadline: %s %s", request.method, escaped(request.path))
        return HttpResponse(status=408, headers=deadline_answer_headers(request, _context.get().deadline))

    # The sync path below runs on every request of a WSGI server, so its common case is written out
    # in one function (what it costs and why: docs/benchmarks.md, benchmarks/middleware.py): headers
    # absent or seen before (_ACCEPTED), no load shedding. Everything else goes through _begin(),
    # _call_limited() and _observe(), which do the same with every check spelled out. The context is
    # set with the contextvar itself rather than set_context(), whose generator cost more than the rest.

    def __call__(self, request: HttpRequest) -> Any:  # noqa: PLR0912 - written out on purpose (above)
        if self._async:
            return self._acall(request)
        started = time.monotonic()
        conf = current.settings
        meta = request.META
        # A value that is not exactly str (only a test client puts one in META: a number, bytes, a
        # list) goes to _begin(), which reads it as _text() does: a list is not hashable, bytes has
        # no str partition, and either raised TypeError here.
        raw = meta.get(META_PRIORITY)
        priority = conf.priority if raw is None else _PRIORITIES.get(raw) if type(raw) is str else None
        raw = meta.get(META_TIMEOUT)
        if raw is None:
            deadline: Deadline | None = DefaultDeadline(started + conf.timeout)
        else:
            # A value accepted before (_ACCEPTED), or one of the plain forms _TIMEOUT accepts ("5",
            # "4.987"; isdigit() alone also takes "²"), checked without the regular expression and then
            # remembered. Whatever else goes to _begin(): refused, ignored, or parsed by parse_timeout().
            seconds = None
            if type(raw) is str:
                seconds = _ACCEPTED.get(raw)
                if seconds is None:
                    whole, dot, fraction = raw.partition(".")
                    if (
                        whole.isdigit()
                        and raw.isascii()
                        and len(whole) <= _MAX_INTEGER_DIGITS
                        and (not dot or (fraction.isdigit() and len(fraction) <= _MAX_DECIMALS))
                    ):
                        seconds = _remember(raw, float(raw))  # a miss only: the call costs no measurable time
            if seconds is not None and seconds > 0 and seconds >= conf.low_timeout_threshold:
                if seconds <= conf.max_timeout:
                    deadline = Deadline(started + seconds)
                else:
                    deadline = ClampedDeadline(started + conf.max_timeout)
            else:
                deadline = None
        if deadline is None or priority is None:
            context = _begin(request, conf, started)  # a refusal, a malformed value, white space, an exponent
            if not isinstance(context, Context):
                _observe(request, context, conf, started)
                return context
        else:
            context = Context(deadline, priority)
        if conf.shedding is not None:
            return self._call_limited(request, conf, context, shedding_for(conf.shedding, conf.known_services), started)
        # catch_deadline_below(), written out: the request's mark (_CATCHER, stored as a plain attribute:
        # one step, where setattr() is a call) and the 408 for a deadline exceeded below.
        request._aio_request_catches_deadline = True  # type: ignore[attr-defined]
        token = _context.set(context)
        try:
            response = self._get_response(request)
        except Exception as exc:  # the deadline run out below answers 408 (database.answer_if_deadline_below)
            answer = answer_if_deadline_below(request, exc)
            if answer is None:
                raise
            response = answer
        finally:
            _context.reset(token)
            request._aio_request_catches_deadline = False  # type: ignore[attr-defined]
        if METRICS_ENABLED:  # _observe(), written out
            match = request.resolver_match
            metrics.server_observations.add(
                (
                    meta.get(META_SERVICE_NAME),
                    request.method,
                    metrics.UNMATCHED_ROUTE if match is None else match.route,
                    response.status_code,
                    conf.known_services,
                    time.monotonic() - started,
                )
            )
        return response

    def _call_limited(
        self,
        request: HttpRequest,
        conf: AioRequestSettings,
        context: Context,
        shedding: Shedding,
        started: float,
    ) -> HttpResponseBase:
        """The sync path with load shedding on: waits for a slot (or is refused), holds it until the view returned."""
        context = _policed(shedding, request, context)
        limiter = shedding.limiter
        priority = cast(Priority, context.priority)
        admission = limiter.acquire(priority, _judged(context))
        if not admission.admitted:
            response: HttpResponseBase = _shed(priority, admission)
        elif admission.waited and hung_up(request.META.get(META_SOCKET)):
            # Its caller went away while it waited for the slot: the view would serve nobody, and
            # the slot would be kept from the callers still waiting (a review: under gthread a
            # caller behind it waited a whole such view out, and after a storm of callers giving up
            # 104 such views ran). The async path learns of it from Django, which cancels the task.
            limiter.give_back(admission.admitted_at, thread=True)
            response = _caller_left(request)
        else:
            # The CPU the view uses tells the limit how many are worth running at once; under gevent or
            # eventlet the thread's CPU is every greenlet's, and none is measured (green_threads.py).
            cpu = time.thread_time() if limiter.measures_thread_cpu else None
            wait, wait_token = measure_downstream_wait()  # waiting on other services is no queueing here
            try:
                token = _context.set(context)
                try:
                    response = self.get_response(request)
                finally:
                    _context.reset(token)
            finally:
                stop_measuring(wait_token)
                used = None if cpu is None else time.thread_time() - cpu
                limiter.release(admission.admitted_at, thread=True, cpu=used, downstream=wait.off_cpu)
        _observe(request, response, conf, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        started = time.monotonic()
        conf = current.settings
        context = _begin(request, conf, started)
        if not isinstance(context, Context):
            _observe(request, context, conf, started)
            return context
        try:
            response = await self._aserve(request, conf, context)
        except asyncio.CancelledError:
            # Django 5 cancels the request's task when its caller hangs up: recorded as the 499 nginx
            # logs for it, at the moment it was cancelled. Unrecorded, an ASGI service's latencies
            # lacked exactly the slow requests whose callers gave up, and every losing hedge
            # (a review: 5 of 15 hedged requests recorded under uvicorn, 15 under gunicorn).
            _observe_status(request, CLIENT_CLOSED_REQUEST, conf, started)
            raise
        _observe(request, response, conf, started)
        return response

    async def _aserve(self, request: HttpRequest, conf: AioRequestSettings, context: Context) -> HttpResponseBase:
        """The response to ``request`` on the async path: the view's, a shed 503, or a deadline's 408."""
        response: HttpResponseBase
        if conf.shedding is None:
            try:
                response = await self._arespond(request, conf, context)
            except _CancelledAtDeadline:
                response = _cancelled_at_deadline(request, context)
        else:
            shedding = shedding_for(conf.shedding, conf.known_services)
            context = await _apoliced(shedding, request, context)
            limiter = shedding.limiter
            priority = cast(Priority, context.priority)
            admission = await limiter.aacquire(priority, _judged(context))
            if not admission.admitted:
                response = _shed(priority, admission)
            else:
                wait, wait_token = measure_downstream_wait()  # waiting on other services is no queueing here

                def release() -> None:
                    limiter.release(admission.admitted_at, thread=False, downstream=wait.off_cpu)

                cancelled = False
                try:
                    response = await self._arespond(request, conf, context)
                except _CancelledAtDeadline:
                    cancelled = True
                    response = _cancelled_at_deadline(request, context)
                except asyncio.CancelledError:  # Django 5: the client went away
                    cancelled = True
                    raise
                finally:
                    stop_measuring(wait_token)
                    # A cancelled request's sync view (or sync middleware below) runs on in its thread:
                    # the slot is its until it returns (a review saw 7 views at once at MAX_CONCURRENCY
                    # 1, under uvicorn, with callers hanging up).
                    if not (cancelled and after_sync_code(release)):
                        release()
        return response

    async def _arespond(self, request: HttpRequest, conf: AioRequestSettings, context: Context) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        token = _context.set(context)
        try:
            if not conf.cancel_async_views_on_timeout:
                return await get_response(request)
            deadline = cast(Deadline, context.deadline)  # _begin always sets one
            try:
                async with asyncio.timeout(None) as timeout:
                    canceller = _Canceller(request, timeout, deadline)
                    canceller_token = _canceller.set(canceller)
                    try:
                        canceller.reschedule(deadline)
                        return await get_response(request)
                    finally:
                        canceller.disarm()
                        _canceller.reset(canceller_token)
            except TimeoutError:
                if not timeout.expired():
                    raise  # the view's own TimeoutError, not our cancellation
        finally:
            _context.reset(token)
        raise _CancelledAtDeadline


class _CancelledAtDeadline(Exception):
    """The middleware cancelled the async view at the deadline (``_Canceller``): answered 408."""


def _cancelled_at_deadline(request: HttpRequest, context: Context) -> HttpResponse:
    metrics.server_cancelled.inc()
    logger.debug("cancelled an async view at its deadline: %s %s", request.method, escaped(request.path))
    return HttpResponse(status=408, headers=deadline_answer_headers(request, context.deadline))

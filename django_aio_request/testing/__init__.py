"""Helpers for testing code that calls ``clients["name"]`` (see docs/testing.md).

- :func:`fake_client` points a named client at a :class:`FakeDownstream`: a scripted transport that
  answers by path with a status and body, after a delay, or with a network error, and records
  every attempt with the deadline and priority it carried. Only the transport is replaced: the
  client's strategies, retry budget, circuit breaker and metrics run as in production.
- :func:`force_breaker` forces a named client's circuit open or closed.
- :func:`request_headers` gives the headers for Django's test client that make the middleware serve
  a request with a given ``X-Request-Timeout`` and priority; :func:`serving` sets that deadline and
  priority directly around code called without the middleware.

They are ``with`` blocks, or decorators of test functions and methods, sync or async, for
unittest-style tests; the pytest plugin (``django_aio_request.pytest_plugin``, loaded automatically)
offers them as the ``aio_request`` fixture, undone after each test.
"""

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json as jsonlib
import sys
import threading
import time
import urllib.parse
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, NoReturn, ParamSpec, TypeVar

from asgiref.sync import iscoroutinefunction
from requests.structures import CaseInsensitiveDict

from django_aio_request.breaker.circuit_breaker import Override
from django_aio_request.core import headers as h
from django_aio_request.core import status
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.client import Client
from django_aio_request.core.context import Context, _context
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import EmptyResponse, Response, UnsentResponse
from django_aio_request.signals import client_built
from django_aio_request.transport.base import Transport
from django_aio_request.transport.direct_send import normalised_url

__all__ = [
    "BreakerNotForcedWarning",
    "FakeDownstream",
    "FakeReplacedWarning",
    "RecordedCall",
    "Reply",
    "UnexpectedCallError",
    "fake_client",
    "fake_under",
    "force_breaker",
    "network_error",
    "reply",
    "request_headers",
    "serving",
]


T = TypeVar("T")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])


class Block(Generic[T]):
    """What :func:`fake_client`, :func:`force_breaker` and :func:`serving` return: a ``with`` block,
    or a decorator of a test function or method, sync or async, that runs it inside a new block at
    each call. One object is one block at a time: entered again while its block is open (two tasks
    sharing it, two exit stacks), it raises; once its block ended, it may be entered again.

    Not ``contextlib.contextmanager``'s object: as a decorator it wraps any function as a sync one,
    so on an ``async def`` test method the block ended before the coroutine ran, and a test whose
    body failed passed (a review). One never entered nor used as a decorator (``serving(timeout=1)``
    alone, written like the fixture's ``aio_request.serving()``) did nothing, silently: it warns.
    """

    __slots__ = ("_make", "_name", "_open", "_used")

    # The fixture's method for each helper, named by the warning of one never entered.
    _FIXTURE_METHODS: ClassVar[dict[str, str]] = {"fake_client": "fake"}

    def __init__(self, make: Callable[[], AbstractContextManager[T]], name: str) -> None:
        self._make = make
        self._name = name
        self._open: AbstractContextManager[T] | None = None  # its block, while open
        self._used = False

    def __enter__(self) -> T:
        self._used = True
        with _entering:  # checked and taken in one step: two threads entering at once both got in
            if self._open is not None:
                # One list of blocks for every user of the object ended the wrong one: two tasks sharing
                # it were left with a deadline each, and an exit stack closed another's fake (a review).
                raise RuntimeError(
                    f"this {self._name}() block is open already: call {self._name}(...) again for another one"
                )
            self._open = _TAKEN
        try:
            block = self._make()
            value = block.__enter__()
        except BaseException:
            self._open = None
            raise
        self._open = block
        # Held until exited: a block entered and not kept (``fake = fake_client("billing").__enter__()``)
        # was freed at once, and its generator's close ended it there, silently: the calls that
        # followed went to the real endpoint (a review). Now it lasts until exited, as
        # ``mock.patch(...).start()`` lasts until stopped.
        _open_blocks.add(self)
        return value

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        block, self._open = self._open, None
        assert block is not None, f"{self._name}() block exited without being entered"
        _open_blocks.discard(self)
        return block.__exit__(kind, error, traceback)

    def __call__(self, function: F) -> F:
        self._used = True
        if isinstance(function, staticmethod | classmethod):  # above @staticmethod: decorate what it holds
            return type(function)(self(function.__func__))
        if isinstance(function, type):
            raise TypeError(
                f"{self._name}() decorates test functions and methods, not a class: decorate each method, or"
                f" enter it in setUp() (self.enterContext() on Python 3.11+, or __enter__ and addCleanup)"
            )
        inner = inspect.unwrap(function)
        if inspect.isgeneratorfunction(inner) or inspect.isasyncgenfunction(inner):
            # Its body runs as it is iterated, after the call: the block would have ended (a fixture).
            raise TypeError(
                f"{self._name}() decorates test functions and methods, not generator functions such as a"
                f" pytest fixture: use `with {self._name}(...):` around the yield"
            )
        code = getattr(inner, "__code__", None)  # none for a partial, asgiref's AsyncToSync...
        make, where = self._make, (None if code is None else (code.co_filename, code.co_firstlineno))
        # asgiref's check: it also knows a sync function marked as a coroutine function. Not the
        # unwrapped function's: a sync wrapper that runs it itself (asyncio.run) is run as it is,
        # and one that returns its coroutine has it awaited inside a block below.
        if iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_inside(*args: Any, **kwargs: Any) -> Any:
                with _decorated.set_to(where), make():  # set while the block ends: its warning
                    return await function(*args, **kwargs)

            return run_inside  # type: ignore[return-value]

        @functools.wraps(function)
        def run_inside_sync(*args: Any, **kwargs: Any) -> Any:
            with _decorated.set_to(where), make():  # set while the block ends: its warning
                result = function(*args, **kwargs)
            if inspect.isawaitable(result):
                # A wrapper that hides a coroutine function: its body runs when it is awaited, after
                # the block ended. Awaited inside a block of its own, whoever awaits it.
                return _awaited_inside(result, make, where)
            return result

        return run_inside_sync  # type: ignore[return-value]

    def __del__(self) -> None:
        if self._used:
            return
        fixture = self._FIXTURE_METHODS.get(self._name, self._name)
        # Only what interpreter exit may raise here: a Warning made an error (-W error) goes on, to
        # sys.unraisablehook and pytest's report of it (contextlib.suppress(Exception) swallowed it).
        with contextlib.suppress(AttributeError, ImportError, TypeError):
            warnings.warn(
                f"{self._name}() was never entered, so it did nothing: write `with {self._name}(...):` or use it"
                f" as a decorator (in a pytest test, the aio_request fixture's {fixture}() needs no with: it lasts"
                " until the test ends)",
                RuntimeWarning,
                stacklevel=2,
            )


_entering = threading.Lock()
_TAKEN: Any = contextlib.nullcontext()  # a block being entered, not yet open
_open_blocks: "set[Block[Any]]" = set()  # every block entered and not yet exited (Block.__enter__)


async def _awaited_inside(awaitable: Any, make: Callable[[], AbstractContextManager[Any]], where: Any) -> Any:
    with _decorated.set_to(where), make():
        return await awaitable


class _Decorated:
    """Where the test function a helper decorates was defined, while it runs: the place a warning of
    the helper's names (the frames above it are unittest's or pytest's)."""

    def __init__(self) -> None:
        self._where: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("decorated", default=None)

    @contextlib.contextmanager
    def set_to(self, where: tuple[str, int] | None) -> Iterator[None]:
        token = self._where.set(where)
        try:
            yield
        finally:
            self._where.reset(token)

    def get(self) -> tuple[str, int] | None:
        return self._where.get()

    def set_until_undone(self, where: tuple[str, int]) -> Callable[[], None]:
        """Set ``where`` now; returns what sets it back (the pytest fixture's end, around its blocks' ends)."""
        token = self._where.set(where)
        return functools.partial(self._where.reset, token)


_decorated = _Decorated()


def _warn_at_the_test(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` naming the test's line: its ``with`` statement, or the test function a helper
    decorates; a fixed ``stacklevel`` named ``contextlib``'s or ``unittest``'s."""
    where = _decorated.get()
    if where is None:
        warnings.warn(message, category, stacklevel=_caller_level())
    else:
        warnings.warn_explicit(message, category, where[0], where[1])


def _block(function: Callable[P, Iterator[T]]) -> Callable[P, Block[T]]:
    """A generator function made into a helper returning :class:`Block` (as ``contextmanager``)."""
    made = contextlib.contextmanager(function)

    @functools.wraps(function)
    def helper(*args: P.args, **kwargs: P.kwargs) -> Block[T]:
        return Block(lambda: made(*args, **kwargs), function.__name__)

    return helper


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this module and ``contextlib``: the user's
    ``with`` statement or decorated test, whichever way the block was entered (a fixed level
    pointed into ``contextlib`` for a fixture's or a decorator's block)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename in (__file__, contextlib.__file__):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


class UnexpectedCallError(AssertionError):
    """A call reached a :class:`FakeDownstream` on a path no route was given for."""


@dataclasses.dataclass(frozen=True)
class Reply:
    """What the fake answers one attempt with: made by :func:`reply` and :func:`network_error`."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0  # seconds before answering; an attempt with less time left ends 408 at its deadline
    network_error: bool = False  # answer 489, as the real transport does for refused or reset connections


def reply(
    status: int = 200,
    *,
    body: bytes | str = b"",
    json: Any = dataclasses.MISSING,
    headers: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> Reply:
    """An HTTP answer; ``json=`` serialises a body and sets ``Content-Type: application/json``
    unless ``headers`` name a content type of their own (in any case)."""
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f"status must be an int, not {type(status).__name__} {status!r}")
    if not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status from 100 to 599, not {status}")
    extra = dict(headers or {})
    if json is not dataclasses.MISSING:
        body = jsonlib.dumps(json)
        if not any(name.lower() == "content-type" for name in extra):
            extra["Content-Type"] = "application/json"
    if not isinstance(body, str | bytes | bytearray | memoryview):
        # bytes(5) is five NUL bytes: a body of 5 read as b"\x00\x00\x00\x00\x00"
        raise TypeError(f"body must be bytes or str, not {type(body).__name__}; json= serialises other values")
    _check_delay(delay)
    data = body.encode() if isinstance(body, str) else bytes(body)
    return Reply(status=status, body=data, headers=extra, delay=delay)


def network_error(*, delay: float = 0.0) -> Reply:
    """A failed connection (refused, reset): the client sees 489, which its strategy may retry."""
    _check_delay(delay)
    return Reply(status=status.NETWORK_ERROR, delay=delay, network_error=True)


def _check_delay(delay: float) -> None:
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise TypeError(f"delay must be a number of seconds, not {delay!r}")
    if not delay >= 0:  # NaN too: it compares false with anything, and would answer at once
        raise ValueError(f"delay must be >= 0, not {delay!r}")


@dataclasses.dataclass(frozen=True)
class RecordedCall:
    """One attempt that reached the fake, as the downstream service would have received it."""

    method: str
    path: str  # relative to the client's endpoint, filled in, as sent (percent-encoded): "invoices/7"
    template: str  # the request's URL template: "invoices/{id}"
    query: str
    headers: Mapping[str, str]  # any case: call.headers["x-request-timeout"] too
    body: bytes | None
    at: float  # time.monotonic() of arrival

    @property
    def timeout(self) -> float | None:
        """Seconds of ``X-Request-Timeout`` (the attempt's time left when sent), or None if not sent."""
        value = self.headers.get(h.X_REQUEST_TIMEOUT)
        return None if value is None else float(value)

    @property
    def priority(self) -> Priority | None:
        """The ``X-Request-Priority`` sent, or None if not sent."""
        return Priority.parse(self.headers.get(h.X_REQUEST_PRIORITY))


class FakeDownstream(Transport):
    """A transport that answers from a script instead of the network.

    ``route(path, *replies, method=None)``: ``path`` is relative to the endpoint, filled in
    (``"invoices/7"``), a URL template (``"invoices/{id}"``) or a prefix ending in ``*``; several
    replies answer successive attempts in order, the last one repeating (``reply(503), reply(200)``
    makes a first attempt fail and its retry succeed). A path with no route raises
    :class:`UnexpectedCallError` out of the call, and is kept in :attr:`unexpected`: code under test
    that catches the error (a fallback's ``except Exception``) hides it from the test, so
    :func:`fake_client`'s block fails at its end when any was kept.

    Like a real transport, an attempt ends with 408 when its deadline comes before the reply's
    delay, and with 499 when its strategy abandons it (a hedge that lost); one cancelled before it
    was sent is neither sent nor recorded (an :class:`~django_aio_request.core.response.UnsentResponse`).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        # The endpoint's path as calls' URLs carry it: joined as build_url() joins ("/api/./v1/"
        # becomes "/api/v1/"), so recorded paths stay relative to it.
        built = Request(method="GET", url="x").build_url(endpoint)
        self._base = urllib.parse.urlsplit(normalised_url(built)).path[:-1]
        self._written_base = urllib.parse.urlsplit(built).path[:-1]  # before requests' encoding
        self._lock = threading.Lock()
        self._routes: dict[tuple[str | None, str], list[Reply]] = {}
        self._served: dict[tuple[str | None, str], int] = {}
        self._calls: list[RecordedCall] = []
        self._unexpected: list[UnexpectedCallError] = []
        self._repeated: list[UnexpectedCallError] = []  # those the block's end repeats

    def route(self, path: str, *replies: Reply, method: str | None = None) -> None:
        """Answer attempts to ``path`` (any method, or only ``method``) with ``replies``."""
        if not replies:
            replies = (reply(),)
        if not all(isinstance(r, Reply) for r in replies):
            raise TypeError("route() takes Reply objects: make them with reply() or network_error()")
        key = (method.upper() if method else None, path.lstrip("/"))
        with self._lock:
            self._routes[key] = list(replies)
            self._served[key] = 0

    @property
    def calls(self) -> list[RecordedCall]:
        """Every attempt received so far, in order of arrival."""
        with self._lock:
            return list(self._calls)

    @property
    def unexpected(self) -> list[str]:
        """What each call no route answered raised (:class:`UnexpectedCallError`'s text), in order."""
        with self._lock:
            return [str(error) for error in self._unexpected]

    def _seen(self, failure: BaseException | None) -> None:
        """The test failed with ``failure``: the unexpected calls' errors it holds need no repeating:
        in its chain of causes and contexts, and in an exception group's members (a ``TaskGroup`` or
        ``gather`` wrapping the call: the test failed once with the group, and then again at its
        teardown, which said the error had been caught)."""
        seen: set[int] = set()
        waiting = [failure] if failure is not None else []
        while waiting:  # each exception once: a chain may loop
            error = waiting.pop()
            if id(error) in seen:
                continue
            seen.add(id(error))
            waiting.extend(e for e in (error.__cause__, error.__context__) if e is not None)
            if isinstance(error, BaseExceptionGroup):
                waiting.extend(error.exceptions)
        with self._lock:
            self._repeated = [error for error in self._repeated if id(error) not in seen]

    def _to_repeat(self) -> list[str]:
        with self._lock:
            return [str(error) for error in self._repeated]

    def calls_to(self, path: str) -> list[RecordedCall]:
        """The attempts whose filled-in path (as sent, or percent-decoded) or template is ``path``."""
        path = path.lstrip("/")
        return [c for c in self.calls if path in (c.path, urllib.parse.unquote(c.path), c.template)]

    def send(
        self, endpoint: str, request: Request, timeout: float, cancellation: Cancellation | None = None
    ) -> Response:
        started = time.monotonic()
        # The URL as requests sends it (the real transport prepares it so): a literal space, "é" or
        # "%" in the request's URL goes out percent-encoded, and so it is recorded and routed. Taken
        # as build_url() made it, "files/100%" was recorded so, and a route written as the server
        # sees the path, "files/100%25", found no call (a review).
        built = request.build_url(endpoint)
        parts = urllib.parse.urlsplit(normalised_url(built))
        inside = parts.path.startswith(self._base)
        # The path as the URL wrote it, before requests encoded it: a route written so answered it
        # before (requests also decodes "%7E" to "~": route("users/%7Ealice/*") found nothing).
        written = urllib.parse.urlsplit(built).path
        if inside:
            # Not stripped of a "/" left after the base: "/api/v1//invoices/7" is sent so, and is not
            # "invoices/7" (a review); the base of an endpoint without a path is "/" itself.
            path, template = parts.path[len(self._base) :], request.url.lstrip("/")
            written = written[len(self._written_base) :] if written.startswith(self._written_base) else path
        else:
            # A leading "/" or a "../" leaves the endpoint's path, as in a browser (RFC 3986): sent
            # there, recorded as sent, from the root, and answered by no route. "/invoices/7" was
            # answered from route("invoices/7") and recorded as "invoices/7", where the real client
            # calls http://billing:8080/invoices/7, not .../api/v1/invoices/7 (a review).
            path, template = parts.path, request.url
        if cancellation is not None and cancellation.cancelled:
            # Like the real transport: cancelled before it was sent, it is not sent (nor recorded).
            return UnsentResponse(status=status.CANCELLED, elapsed=time.monotonic() - started)
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(request.headers)
        call = RecordedCall(request.method, path, template, parts.query, headers, request.body, started)
        with self._lock:
            self._calls.append(call)
            answer = self._next_reply(request.method, path, template, written) if inside else None
        if answer is None:
            raise self._unexpected_call(request, path, template, endpoint, inside=inside)
        if answer.delay:
            woken = threading.Event()
            undo = cancellation.on_cancel(woken.set) if cancellation is not None else None
            try:
                if woken.wait(min(answer.delay, timeout)):
                    return EmptyResponse(status=status.CANCELLED, elapsed=time.monotonic() - started)
            finally:
                if undo is not None:
                    undo()
            if answer.delay > timeout:
                return EmptyResponse(status=status.TIMEOUT, elapsed=time.monotonic() - started)
        if cancellation is not None and cancellation.cancelled:
            return EmptyResponse(status=status.CANCELLED, elapsed=time.monotonic() - started)
        if answer.network_error:
            return EmptyResponse(status=status.NETWORK_ERROR, elapsed=time.monotonic() - started)
        return Response(
            status=answer.status, headers=answer.headers, body=answer.body, elapsed=time.monotonic() - started
        )

    def _next_reply(self, method: str, path: str, template: str, written: str) -> Reply | None:
        decoded = urllib.parse.unquote(path)  # a route written as the test reads it: "files/a b"
        exact: tuple[tuple[str | None, str], ...] = (
            (method, path),
            (None, path),
            (method, decoded),
            (None, decoded),
            (method, written),
            (None, written),
            (method, template),
            (None, template),
        )
        for key in exact:
            if key in self._routes:
                return self._take(key)
        for key in self._routes:
            wanted_method, pattern = key
            if wanted_method in (None, method) and pattern.endswith("*"):
                prefix = pattern[:-1]
                if path.startswith(prefix) or decoded.startswith(prefix) or written.startswith(prefix):
                    return self._take(key)
        return None

    def _unexpected_call(
        self, request: Request, path: str, template: str, endpoint: str, *, inside: bool
    ) -> UnexpectedCallError:
        """The error for a call no route answers, kept in :attr:`unexpected`."""
        if inside:
            with self._lock:
                known = ", ".join(sorted(p if m is None else f"{m} {p}" for m, p in self._routes)) or "none"
            # A template route matches the call's template as written: "invoices/{id}" is not the
            # call's "invoices/{pk}", which the message then shows.
            written = f" (template {template})" if template != path else ""
            text = f"{request.method} {path}{written}: no route in the fake of {endpoint} (routes: {known})"
        else:
            text = (
                f"{request.method} {path}: outside the path of the fake's endpoint {endpoint} (a request URL"
                f" starting with '/' or '../' leaves it, as in a browser: {request.url!r})"
            )
        error = UnexpectedCallError(text)
        with self._lock:
            self._unexpected.append(error)
            self._repeated.append(error)
        return error

    def _take(self, key: tuple[str | None, str]) -> Reply:
        replies = self._routes[key]
        served = self._served[key]
        self._served[key] = served + 1
        return replies[min(served, len(replies) - 1)]


@_block
def fake_client(name: str, *, allow_unexpected: bool = False) -> Iterator[FakeDownstream]:
    """Point ``clients[name]`` at a new :class:`FakeDownstream` for the block.

    A call to a path no route answers raises :class:`UnexpectedCallError` out of the call, and the
    block, ended without an exception, raises one naming every such call: a view that catches the
    first (its fallback's ``except Exception``) passed its test while it called a path nobody
    routed (a review). ``allow_unexpected=True``: a test that expects such calls (checking the error
    itself with ``pytest.raises``) is not failed at the end.

    The client is built from ``AIO_REQUEST["CLIENTS"][name]`` as in production, fresh (its breaker,
    budget and learned delays start empty), with the fake as its transport. Its breaker counts in
    this process only, whatever ``CIRCUIT_BREAKER_STATE`` says: a fake's failures must not open the
    real client's circuit in a shared cache (nor another test's fake), and the breaker publisher
    leaves it out (admin never sees it, and its overrides never lift :func:`force_breaker`'s). On
    exit it is closed and the client used before comes back; a reference kept to the fake (a module
    that looked the client up during the block) calls whatever is under the name from then on.
    Change settings (``override_settings``) before entering: a change of ``AIO_REQUEST`` inside the
    block rebuilds every client, the fake's too, and the block's end warns
    (:class:`FakeReplacedWarning`) if a real client was made under the name meanwhile.
    """
    from django_aio_request.conf.building import build_client
    from django_aio_request.conf.schema import LOCAL_BREAKER_STATE
    from django_aio_request.named_clients import clients, unknown_client

    config = clients.settings
    spec = config.clients.get(name)
    if spec is None:
        raise unknown_client(name, config.clients)
    fake = FakeDownstream(spec.endpoint)
    local = dataclasses.replace(spec, circuit_breaker_state=LOCAL_BREAKER_STATE)
    client = build_client(local, config.service_name, transport=fake)
    with _fakes_lock:  # one step with the end's: an end between the two left a kept client calling the network
        previous = clients.replace(name, client)
        made = clients.made(name)
        if previous is not None:
            # A reference to it kept before the block (billing = clients["billing"] at import) calls
            # what is under the name now: the fake (before, the network, and no UnexpectedCallError).
            previous.stand_in = clients.follower(name)
        _force_under_name(name, client)  # a force_breaker() block of the name, open: the fake is forced too
    __tracebackhide__ = True  # pytest: the failure at the block's end points at the test, not here
    try:
        yield fake
    except BaseException as error:
        # The test failed for a reason of its own (or with the unexpected call's error itself): that
        # goes on as it was, with the calls no route answered in a note, as they may be its cause
        # (a fallback's answer failed the test's assert).
        fake._seen(error)
        repeated = fake._to_repeat()
        if repeated and not allow_unexpected:
            error.add_note(f"fake_client({name!r}): calls no route answers reached the fake: {'; '.join(repeated)}")
        raise
    finally:
        with _fakes_lock:
            # A reference to the fake kept past the block (a module first imported during it, as
            # pytest-django imports the URLconf at a session's first request) calls what is under
            # the name from now on; it answered from this block's script in every later test.
            client.stand_in = clients.follower(name)
            back = previous
            while back is not None and back in _ended_fakes:  # a fake below this one whose block ended first
                back = _ended_fakes[back]
            if clients.replace(name, back, only_if=client) is None:
                # Not the client under the name: a fake made after this one is (a test's own block
                # and a fixture's end in either order), or settings rebuilt the clients. Whichever
                # fake ends last puts back what was there before this one, never this closed one.
                _ended_fakes[client] = back
            elif back is not None and clients.current(name) is back:
                back.stand_in = None  # under its name again: its calls are its own
                _force_under_name(name, back)
            replaced = clients.made(name) != made
        client.close()
        if replaced:
            _warn_at_the_test(
                f"fake_client({name!r}): AIO_REQUEST changed while the fake was in use, and calls after the change"
                f" went to a real client made from the new settings, not to the fake. Change settings before making"
                f" the fake (a test method's @override_settings applies after setUp: make the fake in the method)",
                FakeReplacedWarning,
            )
    # Here only when the block ended without an exception: one raised in it (a failing assert, the
    # UnexpectedCallError itself) goes on as it was. Ended by a fixture's teardown after its test
    # failed (a project's fixture around `with fake_client(...): yield`), the test's failure is known
    # (the pytest plugin's _test_failure): a call it holds was reported with it.
    fake._seen(_test_failure)
    repeated = fake._to_repeat()
    if repeated and not allow_unexpected:
        raise UnexpectedCallError(
            f"fake_client({name!r}): {len(repeated)} call(s) no route answers reached the fake: {'; '.join(repeated)}."
            f" Each raised UnexpectedCallError out of its call, repeated here at the block's end, as code under"
            f" test that caught it (a fallback's `except Exception`) hid it. Route them, or make the fake with"
            f" allow_unexpected=True if the test expects them"
        )


def fake_under(name: str) -> FakeDownstream:
    """The :class:`FakeDownstream` of the :func:`fake_client` block open for ``name`` now: what a test
    that ``@fake_client(name)`` decorates routes and reads (the decorator hands it nothing)."""
    from django_aio_request.named_clients import clients

    client = clients.current(name)
    transport = None if client is None else client.transport
    if not isinstance(transport, FakeDownstream):
        raise LookupError(f"no fake_client({name!r}) block is open: clients[{name!r}] is not a fake now")
    return transport


# The exception the pytest test being torn down failed with, set by the package's pytest plugin from
# the test's failure until the end of its teardown (never longer: a traceback holds the test's frames),
# None otherwise: a fake_client() block a project's own fixture ends then repeats none of the
# unexpected calls that failure holds (the test was failed with the call's error and again at its
# teardown, a review).
_test_failure: BaseException | None = None


class FakeReplacedWarning(UserWarning):
    """A settings change during a :func:`fake_client` block rebuilt the clients, and a real client
    was made under the fake's name before the block ended: calls meant for the fake were not faked."""


# A fake client whose block ended while a fake made after it was still under its name -> the client
# to put back in its place. Weak keys: an entry lasts as long as the fake above still holds it.
_ended_fakes: "weakref.WeakKeyDictionary[Client, Client | None]" = weakref.WeakKeyDictionary()
_fakes_lock = threading.Lock()


_STATES: dict[str, Override] = {"open": Override.FORCE_OPEN, "closed": Override.FORCE_CLOSED}


@_block
def force_breaker(name_or_client: str | Client, state: Literal["open", "closed"]) -> Iterator[Client]:
    """Force the circuit of a client's endpoint ``"open"`` (every call answers 502 with
    ``X-Circuit-Breaker`` without sending) or ``"closed"`` for the block; the override in force
    before comes back on exit. Works on a :func:`fake_client` too.

    While the block is open, every client that comes under the name is forced as well: one built
    from settings changed meanwhile (``override_settings``, pytest-django's ``settings``), a fake
    made in the block, the client a fake's end puts back. Before, a settings change inside the block
    rebuilt the client unforced, and its calls reached the endpoint (a review). One that cannot be
    forced (built without ``CIRCUIT_BREAKER``) makes the block's end warn: :class:`BreakerNotForcedWarning`.
    """
    if state not in _STATES:
        raise ValueError(f"state must be 'open' or 'closed', not {state!r}")
    from django_aio_request.named_clients import clients

    if isinstance(name_or_client, Client):
        # The client its calls go to: a reference kept from before a settings change, or to a fake
        # whose block ended, calls the one under its name now (ClientsHandler.follower). Forcing the
        # breaker of the one given left its calls reaching the endpoint (a review).
        client = name_or_client._standing_in() or name_or_client
        name = next((n for n, c in clients.built() if c is client), None)  # None: a client made by hand
    else:
        client, name = clients[name_or_client], name_or_client
    forcing = _Forcing(_STATES[state], name)
    with _forced_lock:
        forcing.hold(client, given=True)  # raises for a client that cannot be forced
        if name is not None:
            _forcings.setdefault(name, []).append(forcing)
    if name is not None:
        _force_under_name(name, clients.current(name))  # one a settings change built just now
    try:
        yield client
    finally:
        with _forced_lock:
            forcing.release()
        if forcing.unforced:
            _warn_at_the_test(
                f"force_breaker({name!r}, {state!r}): {'; '.join(forcing.unforced)}, so its calls were not forced."
                " Change AIO_REQUEST before forcing the breaker, or keep CIRCUIT_BREAKER in the new settings",
                BreakerNotForcedWarning,
            )


class BreakerNotForcedWarning(UserWarning):
    """A client came under a :func:`force_breaker` block's name while the block was open (a settings
    change rebuilt the clients) and could not be forced: its calls were sent."""


@dataclasses.dataclass
class _Forced:
    """The :func:`force_breaker` blocks holding one breaker's endpoint, and the override before them."""

    before: Override | None
    blocks: list[tuple[Override]] = dataclasses.field(default_factory=list)


class _Forcing:
    """One open :func:`force_breaker` block: the circuits it holds, one per client it forced."""

    def __init__(self, override: Override, name: str | None) -> None:
        self.override = override
        self.name = name
        # (key in _forced, its entry, this block's entry in it, the breaker's set_override, the endpoint)
        self.held: list[tuple[tuple[int, str], _Forced, tuple[Override], Callable[..., None], str]] = []
        self.unforced: list[str] = []  # why a client that came under the name was not forced

    def hold(self, client: Client, *, given: bool = False) -> None:
        """(Holding _forced_lock.) Force ``client``'s circuit until :meth:`release`; once per circuit.
        A client that cannot be forced raises if it is the one given, and is noted otherwise."""
        breaker = client.circuit_breaker
        snapshot = getattr(breaker, "snapshot", None)
        set_override = getattr(breaker, "set_override", None)
        if breaker is None or snapshot is None or set_override is None:
            if given and breaker is None:
                raise ValueError(f"{client!r} has no circuit breaker: give it CIRCUIT_BREAKER settings")
            if given:
                raise TypeError(f"{type(breaker).__name__} cannot be forced: it has no set_override()")
            self.unforced.append(f"a client made under the name during the block ({client!r}) has no circuit breaker")
            return
        key = (id(breaker), client.endpoint)  # the breaker lives while a block holds it
        if any(held[0] == key for held in self.held):
            return
        forced = _forced.get(key)
        if forced is None:
            before = next((s.override for s in snapshot() if s.scope == client.endpoint), None)
            forced = _forced[key] = _Forced(before)
        mine = (self.override,)  # this block's entry: a tuple of its own, compared by identity
        forced.blocks.append(mine)
        set_override(client.endpoint, self.override)
        self.held.append((key, forced, mine, set_override, client.endpoint))

    def release(self) -> None:
        """(Holding _forced_lock.) Undo every circuit this block holds; it forces no client from now on."""
        if self.name is not None:
            _forcings[self.name].remove(self)
            if not _forcings[self.name]:
                del _forcings[self.name]
        for key, forced, mine, set_override, endpoint in reversed(self.held):
            # The blocks of one breaker may end in any order (a fixture's and a test's own): the
            # state in force is the newest block still open's, and the one before them all once
            # every block has ended (an outer block ending first restored its "before" and the
            # inner one then put the outer's state back, for the rest of the session).
            forced.blocks[:] = [b for b in forced.blocks if b is not mine]
            if forced.blocks:
                set_override(endpoint, forced.blocks[-1][0])
            else:
                del _forced[key]
                set_override(endpoint, forced.before)


def _force_under_name(name: str, client: Client | None) -> None:
    """Every open :func:`force_breaker` block of ``name`` forces ``client`` too: it came under the name
    (built from changed settings, a fake made, one a fake's end put back)."""
    if client is None:
        return
    with _forced_lock:
        for forcing in _forcings.get(name, ()):
            forcing.hold(client)


def _forced_when_built(sender: object, *, name: str, client: Client, **kwargs: Any) -> None:
    """``client_built``: a client built under the name of an open :func:`force_breaker` block is
    forced before any thread is given it (the registry waits for its receivers)."""
    _force_under_name(name, client)


_forced: dict[tuple[int, str], _Forced] = {}  # (breaker's id, endpoint) -> the blocks holding it


def forced_circuits() -> frozenset[tuple[int, str]]:
    """``(id(breaker), endpoint)`` of each circuit an open :func:`force_breaker` block holds: the
    breaker publisher's rounds leave their overrides alone until the blocks end."""
    with _forced_lock:
        return frozenset(_forced)


_forcings: dict[str, list[_Forcing]] = {}  # client name -> its open blocks, oldest first
_forced_lock = threading.Lock()
client_built.connect(_forced_when_built, weak=False, dispatch_uid="django_aio_request.testing.force_breaker")


def request_headers(*, timeout: float | None = None, priority: str | Priority | None = None) -> dict[str, str]:
    """Headers for Django's test client (``client.get(url, headers=...)``) that make the
    middleware serve the request with ``timeout`` seconds and ``priority``, as a caller would."""
    headers: dict[str, str] = {}
    if timeout is not None:
        Deadline.from_timeout(timeout)  # the same checks: a finite number >= 0 (TypeError for a non-number)
        headers[h.X_REQUEST_TIMEOUT] = repr(abs(float(timeout)))  # abs: -0.0 passes the checks, "-0.0" would not
    if priority is not None:
        headers[h.X_REQUEST_PRIORITY] = str(_priority(priority))
    return headers


@_block
def serving(*, timeout: float | None = None, priority: str | Priority | None = None) -> Iterator[Context]:
    """Set the deadline (``timeout`` seconds from now) and priority as the middleware would for a
    request, around code called directly (a view function with ``RequestFactory``, a task)."""
    context, undo = _serve_until_undone(timeout=timeout, priority=priority)
    try:
        yield context
    finally:
        undo()


# Used with `with`, it said only "'_ServedUntilTheTestEnds' object does not support the context manager
# protocol" (a review).
_NOT_A_BLOCK = (
    "the aio_request fixture's serving() sets the deadline and priority until the test ends, not for a block:"
    " call it as a statement, or use `with django_aio_request.testing.serving(...):` for a block"
)


class _ServedUntilTheTestEnds(Context):
    """The fixture's ``serving()`` context: once its test ended, it reads as the context before it,
    in whatever thread or task still holds it. A thread that outlives the test (a project's pool
    worker) keeps its contextvars, which teardown cannot reach from the test's thread: the deadline
    set there stayed in that thread, and once it passed, every later test's call from it was a 408
    that sent nothing (a review)."""

    __slots__ = ("_before", "_ended")

    def __init__(self, deadline: Deadline | None, priority: Priority | None, before: Context) -> None:
        super().__init__(deadline, priority)
        self._before = before
        self._ended = False

    def __enter__(self) -> NoReturn:
        raise TypeError(_NOT_A_BLOCK)

    def __exit__(self, *exc_info: object) -> None:  # never reached: __enter__ raised (Python wants both)
        return None

    async def __aenter__(self) -> NoReturn:
        raise TypeError(_NOT_A_BLOCK)

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @property
    def deadline(self) -> Deadline | None:
        return self._before.deadline if self._ended else self._deadline

    @property
    def priority(self) -> Priority | None:
        return self._before.priority if self._ended else self._priority


def _serve_until_undone(
    *, timeout: float | None = None, priority: str | Priority | None = None, until_the_test_ends: bool = False
) -> tuple[Context, Callable[[], None]]:
    """:func:`serving` without the block: the context set, and the function that undoes it.

    For the pytest fixture, whose ``serving()`` lasts until the test ends: the test may call it from
    async code or another thread, in a context of its own, and the fixture undoes it at teardown,
    in the test's. Resetting by token raised ``ValueError`` there ("created in a different
    Context"); and ``async_to_sync`` copies its context's changes back to its caller, so the
    deadline stayed set for every later test of the session. ``undo`` resets by token where it
    can, and otherwise puts the value before back wherever this one is still in force. With
    ``until_the_test_ends`` (the fixture's), the context also reads as the one before it from then
    on wherever it is still set (:class:`_ServedUntilTheTestEnds`: another thread's).
    """
    outer = _context.get()
    deadline = outer.deadline if timeout is None else Deadline.from_timeout(timeout)
    chosen = outer.priority if priority is None else _priority(priority)
    before = outer
    while isinstance(before, _ServedUntilTheTestEnds) and before._ended:
        # An earlier test's, in a thread that outlived it: what it reads as. Kept, a pool worker
        # called once per test made a chain of them as long as the session, walked at each read,
        # and RecursionError after about 990 tests (a review).
        before = before._before
    new = _ServedUntilTheTestEnds(deadline, chosen, before) if until_the_test_ends else Context(deadline, chosen)
    token = _context.set(new)

    def undo() -> None:
        if isinstance(new, _ServedUntilTheTestEnds):
            new._ended = True
        try:
            _context.reset(token)
        except ValueError:  # set in another context (async code, a thread): undo it in this one
            if _context.get() is new:
                _context.set(outer)

    return new, undo


def _priority(value: str | Priority) -> Priority:
    if not isinstance(value, str):  # a Priority is a str too
        raise TypeError(f"priority must be 'high', 'normal', 'low' or a Priority, not {type(value).__name__} {value!r}")
    parsed = value if isinstance(value, Priority) else Priority.parse(value)
    if parsed is None:
        raise ValueError(f"priority must be 'high', 'normal' or 'low', not {value!r}")
    return parsed

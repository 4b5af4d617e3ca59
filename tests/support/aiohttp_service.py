"""aiohttp services behind aio-request's own server middleware, for the interoperability tests.

    with AioHttpService(downstream=other.url) as service:
        service.url  # "http://127.0.0.1:PORT/"

Each service runs an aiohttp application on 127.0.0.1 (a free port) on its own event loop in a
background thread. ``aio_request.aiohttp_middleware_factory()`` puts the deadline and priority
of each request (from ``X-Request-Timeout`` and ``X-Request-Priority``) into aio-request's context,
exactly as in a real aiohttp service. Routes:

- ``GET /context``: what the request found on arrival (see :class:`Seen`), as JSON;
- ``GET /chain?sleep=S``: the same, then sleeps ``S`` seconds and calls ``GET /context`` of the
  ``downstream`` service through an aio-request client (``aio_request.setup`` with an
  ``AioHttpTransport``), which takes its deadline and priority from aio-request's context;
  answers ``{"seen": ..., "downstream_status": ..., "downstream": ...}``;
- ``GET /slow?sleep=S``: answers 200 after ``S`` seconds;
- ``GET /redirect``: redirects to itself, for ever.

:func:`aio_request_call` makes one call with an aio-request client from synchronous test code.
"""

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

import aio_request
import aiohttp
import multidict
from aiohttp import web

T = TypeVar("T")

X_REQUEST_TIMEOUT = "X-Request-Timeout"
X_REQUEST_PRIORITY = "X-Request-Priority"
X_SERVICE_NAME = "X-Service-Name"
SYSTEM_HEADERS = (X_REQUEST_TIMEOUT, X_REQUEST_PRIORITY, X_SERVICE_NAME)


@dataclasses.dataclass(frozen=True)
class Seen:
    """What one request found when its handler started."""

    path: str
    #: ``aio_request.get_context().deadline.timeout``: seconds left, as aio-request's middleware set it.
    timeout: float | None
    #: ``aio_request.get_context().priority`` ("high", "normal", "low").
    priority: str | None
    #: The propagation headers exactly as they arrived (None when absent).
    headers: dict[str, str | None]
    at: float  # time.monotonic()

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "timeout": self.timeout, "priority": self.priority, "headers": self.headers}


class AioHttpService:
    """An aiohttp service behind aio-request's middleware, on its own loop in a background thread.

    ``downstream``: the base URL ``/chain`` calls onward. ``default_timeout``: the deadline
    aio-request's middleware gives a request without ``X-Request-Timeout``.
    """

    def __init__(self, *, downstream: str | None = None, default_timeout: float = 20.0) -> None:
        self.downstream = downstream
        self.default_timeout = default_timeout
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="aiohttp-service")
        self._thread.start()
        try:
            self.port: int = self.run(self._start())
        except BaseException:
            self._stop_loop()
            raise
        self.url = f"http://127.0.0.1:{self.port}/"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the service's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def seen(self, path: str | None = None) -> list[Seen]:
        """What each request (to ``path``, or all) found on arrival, in order of arrival."""
        with self._lock:
            return [s for s in self._seen if path is None or s.path == path]

    def close(self) -> None:
        """Stop serving, close the downstream client's session and stop the loop and its thread."""
        if self._loop.is_closed():
            return
        try:
            if self._runner is not None:
                self.run(self._runner.cleanup())
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def _start(self) -> int:
        app = web.Application(middlewares=[aio_request.aiohttp_middleware_factory(timeout=self.default_timeout)])
        app[_SERVICE] = self
        app.router.add_get("/context", _context)
        app.router.add_get("/chain", _chain)
        app.router.add_get("/slow", _slow)
        app.router.add_get("/redirect", _redirect)
        app.cleanup_ctx.append(self._downstream_client)
        # A handler still running at shutdown (one whose caller gave up) is cancelled after 0.1 s.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _downstream_client(self, app: web.Application) -> AsyncIterator[None]:
        if self.downstream is None:
            yield
            return
        async with aiohttp.ClientSession() as session:
            app[_DOWNSTREAM] = aio_request.setup(
                transport=aio_request.AioHttpTransport(session),
                endpoint=self.downstream,
                safe_method_strategy=aio_request.single_attempt_strategy(),
            )
            yield

    def _record(self, request: web.Request) -> Seen:
        context = aio_request.get_context()
        seen = Seen(
            path=request.path,
            timeout=context.deadline.timeout if context.deadline is not None else None,
            priority=str(context.priority) if context.priority is not None else None,
            headers={name: request.headers.get(name) for name in SYSTEM_HEADERS},
            at=time.monotonic(),
        )
        with self._lock:
            self._seen.append(seen)
        return seen

    def _stop_loop(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._loop.shutdown_asyncgens()

        with contextlib.suppress(Exception):
            self.run(cancel_the_rest(), timeout=5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()


_SERVICE = web.AppKey("service", AioHttpService)
_DOWNSTREAM = web.AppKey("downstream", aio_request.Client)


async def _context(request: web.Request) -> web.Response:
    return web.json_response(request.app[_SERVICE]._record(request).as_json())


async def _chain(request: web.Request) -> web.Response:
    seen = request.app[_SERVICE]._record(request)
    await asyncio.sleep(float(request.query.get("sleep", "0")))
    async with request.app[_DOWNSTREAM].request(aio_request.get("context")) as response:
        status = response.status
        body = await response.json() if response.is_successful() else None
    return web.json_response({"seen": seen.as_json(), "downstream_status": status, "downstream": body})


async def _slow(request: web.Request) -> web.Response:
    request.app[_SERVICE]._record(request)
    await asyncio.sleep(float(request.query.get("sleep", "1")))
    return web.Response(text="late")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(location=request.path)


@dataclasses.dataclass(frozen=True)
class Reply:
    """An aio-request client's final response, read in full."""

    status: int
    headers: multidict.CIMultiDictProxy[str]
    body: bytes
    #: The request as it left the client (after aio-request added its system headers).
    sent_headers: multidict.CIMultiDictProxy[str] | None

    def as_aio_request_response(self) -> aio_request.EmptyResponse:
        """The response as aio-request's classifier sees it (status and headers)."""
        return aio_request.EmptyResponse(status=self.status, headers=self.headers)


def aio_request_call(
    endpoint: str,
    request: aio_request.Request,
    *,
    deadline: aio_request.Deadline | float | None = None,
    priority: aio_request.Priority | None = None,
    context_priority: aio_request.Priority | None = None,
    **setup_kwargs: Any,
) -> Reply:
    """Call ``endpoint`` once with an aio-request client (``aio_request.setup`` with an
    ``AioHttpTransport``) on a fresh event loop, the way an aiohttp service would.

    ``deadline`` in seconds is made into a Deadline when the call starts. ``context_priority`` is
    set in aio-request's context around the call, as its middleware would for an incoming request.
    """

    async def call() -> Reply:
        sent: list[multidict.CIMultiDictProxy[str]] = []

        def remember(outgoing: aio_request.Request) -> aio_request.Request:
            sent.append(multidict.CIMultiDictProxy(multidict.CIMultiDict(outgoing.headers or {})))
            return outgoing

        async with aiohttp.ClientSession() as session:
            client = aio_request.setup(
                transport=aio_request.AioHttpTransport(session),
                endpoint=endpoint,
                request_enricher=remember,
                **setup_kwargs,
            )
            call_deadline = (
                aio_request.Deadline.from_timeout(deadline) if isinstance(deadline, float | int) else deadline
            )
            with aio_request.set_context(priority=context_priority):
                async with client.request(request, deadline=call_deadline, priority=priority) as response:
                    body = await response.read()
                    headers = multidict.CIMultiDictProxy(multidict.CIMultiDict(response.headers))
                    return Reply(response.status, headers, body, sent[-1] if sent else None)

    return asyncio.run(call())

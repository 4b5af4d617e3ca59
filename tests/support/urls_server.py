"""Views and URLs for the server-side tests (middleware, @timeout): each view reports the deadline,
priority and deadline source it saw, or calls the "down" client and reports what it got."""

import asyncio
import contextvars
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template import engines
from django.template.response import TemplateResponse
from django.urls import path, re_path
from django.utils.deprecation import MiddlewareMixin
from django.views import View
from django.views.decorators.cache import cache_page

from django_aio_request import Priority, clients, get, get_context, set_context, timeout
from django_aio_request.server.view_timeout import DefaultDeadline, ViewDeadline

runs: dict[str, int] = {}
finished: list[str] = []
_lock = threading.Lock()


def ran(name: str) -> None:
    with _lock:
        runs[name] = runs.get(name, 0) + 1


def source(deadline: object) -> str | None:
    """Where the deadline in force came from, told by its type."""
    if deadline is None:
        return None
    if isinstance(deadline, DefaultDeadline):
        return "default"  # AIO_REQUEST["TIMEOUT"]
    if isinstance(deadline, ViewDeadline):
        return "view"  # @timeout
    return "header"  # the middleware made it from X-Request-Timeout


def seen() -> dict[str, Any]:
    context = get_context()
    return {
        "timeout": None if context.deadline is None else context.deadline.timeout,
        "priority": None if context.priority is None else str(context.priority),
        "source": source(context.deadline),
    }


def ctx(request: HttpRequest) -> JsonResponse:
    ran("ctx")
    return JsonResponse(seen())


async def actx(request: HttpRequest) -> JsonResponse:
    ran("actx")
    await asyncio.sleep(0)
    return JsonResponse(seen())


def _call(priority: str | None) -> dict[str, Any]:
    named = Priority.parse(priority) if priority else None
    with clients["down"].request(get("echo"), priority=named) as response:
        return {"status": response.status, "body": response.read().decode()}


def call(request: HttpRequest) -> JsonResponse:
    time.sleep(float(request.GET.get("sleep", "0")))
    return JsonResponse(_call(request.GET.get("priority")))


async def acall(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(float(request.GET.get("sleep", "0")))
    return JsonResponse(await sync_to_async(_call)(request.GET.get("priority")))


def stream_call(request: HttpRequest) -> StreamingHttpResponse:
    """A call made while the body streams, after the view returned: the context is not set then."""

    def body() -> Any:
        with clients["down"].request(get("echo")) as response:
            yield response.read()

    return StreamingHttpResponse(body())


def stream_call_kept(request: HttpRequest) -> StreamingHttpResponse:
    """The same with the context taken in the view and set again in the body (docs/server.md's recipe)."""
    context = get_context()

    def body() -> Any:
        with (
            set_context(deadline=context.deadline, priority=context.priority),
            clients["down"].request(get("echo")) as response,
        ):
            yield response.read()

    return StreamingHttpResponse(body())


async def aslow(request: HttpRequest) -> HttpResponse:
    name = request.GET.get("name", "aslow")
    await asyncio.sleep(float(request.GET["sleep"]))
    finished.append(name)
    return HttpResponse(b"done")


# What a thread handed a request's context saw of its deadline once the request was answered.
outliving: list[bool] = []


def _has_deadline() -> bool:
    return get_context().deadline is not None


def ctx_threads(request: HttpRequest) -> JsonResponse:
    """What threads started in a view see of the request's context (docs/server.md), and a thread
    handed it that outlives the request by ``?after=`` seconds (noted in ``outliving``)."""
    with ThreadPoolExecutor(1) as pool:
        seen = {
            "submit": pool.submit(_has_deadline).result(),
            "copy_context_run": pool.submit(contextvars.copy_context().run, _has_deadline).result(),
        }

    def later() -> None:
        time.sleep(float(request.GET["after"]))
        deadline = get_context().deadline
        outliving.append(deadline is not None and deadline.expired)

    threading.Thread(target=contextvars.copy_context().run, args=(later,)).start()
    return JsonResponse(seen)


async def actx_threads(request: HttpRequest) -> JsonResponse:
    """The same from an async view: ``asyncio.to_thread`` and ``loop.run_in_executor``."""
    loop = asyncio.get_running_loop()
    return JsonResponse(
        {
            "to_thread": await asyncio.to_thread(_has_deadline),
            "run_in_executor": await loop.run_in_executor(None, _has_deadline),
            "sync_to_async": await sync_to_async(_has_deadline)(),
        }
    )


async def ablocks(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds holding the event loop (a blocking call in an async view), then, with
    ``?then_await=1``, one await that yields to the loop."""
    time.sleep(float(request.GET["sleep"]))
    if request.GET.get("then_await"):
        await asyncio.sleep(0.01)
    finished.append("ablocks")
    return HttpResponse(b"done")


async def aswallows(request: HttpRequest) -> HttpResponse:
    """Catches the cancellation and answers anyway (docs/server.md: it should re-raise it)."""
    try:
        await asyncio.sleep(float(request.GET["sleep"]))
    except asyncio.CancelledError:
        return HttpResponse(b"swallowed")
    return HttpResponse(b"done")


async def athread(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of blocking work handed to a thread, ``?how=`` sync_to_async or to_thread."""
    seconds = float(request.GET["sleep"])
    if request.GET["how"] == "sync_to_async":
        await sync_to_async(time.sleep)(seconds)
    else:
        await asyncio.to_thread(time.sleep, seconds)
    return HttpResponse(b"done")


def slow(request: HttpRequest) -> HttpResponse:
    time.sleep(float(request.GET["sleep"]))
    finished.append(request.GET.get("name", "slow"))
    return HttpResponse(b"done")


async def araises_timeout(request: HttpRequest) -> HttpResponse:
    async with asyncio.timeout(0.01):
        await asyncio.sleep(1)
    return HttpResponse(b"unreachable")


# @timeout in its every form


@timeout(3)
def timed(request: HttpRequest) -> JsonResponse:
    return JsonResponse(seen())


@timeout(3)
async def atimed(request: HttpRequest) -> JsonResponse:
    return JsonResponse(seen())


@timeout(0.3)
async def atimed_slow(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(float(request.GET["sleep"]))
    finished.append("atimed_slow")
    return HttpResponse(b"done")


@timeout(0.3)
async def atimed_quick(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(float(request.GET.get("sleep", "0")))
    finished.append("atimed_quick")
    return HttpResponse(b"done")


@timeout(1.5)
async def atimed_long(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(float(request.GET.get("sleep", "0")))
    finished.append("atimed_long")
    return HttpResponse(b"done")


@timeout(1.5)
class AsyncLongView(View):
    """atimed_long as a class: the sync dispatch() @timeout wraps returns the handler's coroutine."""

    async def get(self, request: HttpRequest) -> HttpResponse:
        await asyncio.sleep(float(request.GET.get("sleep", "0")))
        finished.append("atimed_long")
        return HttpResponse(b"done")


def listing(request: HttpRequest) -> TemplateResponse:
    """A TemplateResponse counting its renders (what cache_page stores, pickled, after the render)."""
    rendered.append(request.path)
    template = engines["django"].from_string("rendered {{ count }}")
    return TemplateResponse(request, template, {"count": len(rendered)})


rendered: list[str] = []


class _SlowRows:
    """Rows a template iterates: each render sleeps ``seconds`` and notes the deadline it ran under."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __iter__(self) -> Any:
        deadline = get_context().deadline
        render_deadlines.append(math.inf if deadline is None else deadline.timeout)
        time.sleep(self.seconds)
        return iter(["row"])


render_deadlines: list[float] = []


@timeout(0.3)
async def aslow_render(request: HttpRequest) -> TemplateResponse:
    """An async view given 0.3 s whose TemplateResponse takes ``?render=`` seconds to render."""
    template = engines["django"].from_string("{% for r in rows %}{{ r }}{% endfor %}")
    return TemplateResponse(request, template, {"rows": _SlowRows(float(request.GET.get("render", "0")))})


@timeout(0.3)
class AsyncQuickView(View):
    async def get(self, request: HttpRequest) -> HttpResponse:
        finished.append("async_quick_view")
        return HttpResponse(b"done")


class AsyncAfterViewMiddleware:
    """Async-only middleware to put below AioRequestMiddleware: awaits ``?post=`` seconds after the
    view returned (an async ``process_response`` with work to do), and notes when it is done; awaits
    ``?cleanup=`` seconds after the view, also when the view was cancelled (a cleanup in ``finally``)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            response: HttpResponse = await self.get_response(request)
        finally:
            await asyncio.shield(asyncio.sleep(float(request.GET.get("cleanup", "0"))))  # cleanup, cancelled or not
        await asyncio.sleep(float(request.GET.get("post", "0")))
        finished.append("after_view")
        return response


@timeout(3)
class TimedView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(seen())


@timeout(3)
class AsyncTimedView(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        await asyncio.sleep(0)
        return JsonResponse(seen())


class MethodTimedView(View):
    @timeout(3)
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(seen())


class AsyncMethodTimedView(View):
    @timeout(3)
    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(seen())


class PlainView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(seen())


class SubTimedView(TimedView):
    pass


urlpatterns = [
    path("ctx", ctx),
    path("actx", actx),
    path("call", call),
    path("stream-call", stream_call),
    path("stream-call-kept", stream_call_kept),
    path("acall", acall),
    path("aslow", aslow),
    re_path(r"^aslow/[\s\S]+$", aslow),  # any path after it, newlines too: what a client may put in a path
    path("athread", athread),
    path("ablocks", ablocks),
    path("ctx-threads", ctx_threads),
    path("actx-threads", actx_threads),
    path("aswallows", aswallows),
    path("slow", slow),
    path("araises-timeout", araises_timeout),
    path("timed", timed),
    path("atimed", atimed),
    path("atimed-slow", atimed_slow),
    path("class", TimedView.as_view()),
    path("async-class", AsyncTimedView.as_view()),
    path("method", MethodTimedView.as_view()),
    path("async-method", AsyncMethodTimedView.as_view()),
    path("sub-class", SubTimedView.as_view()),
    path("urls-fn", timeout(4)(ctx)),
    path("urls-async-fn", timeout(4)(actx)),
    path("urls-class", timeout(4)(PlainView.as_view())),
    path("urls-nested", timeout(4)(timed)),
    path("urls-async-slow", timeout(0.3)(aslow)),
    path("atimed-quick", atimed_quick),
    path("aslow-render", aslow_render),
    path("atimed-long", atimed_long),
    path("async-class-quick", AsyncQuickView.as_view()),
    path("async-class-long", AsyncLongView.as_view()),
    path("cached-timed-listing", cache_page(60)(timeout(5)(listing))),
    path("timed-cached-listing", timeout(5)(cache_page(60)(listing))),
]


class SyncOnlyMiddleware:
    """A sync-only middleware (no ``async_capable``), as older third-party middleware is: under ASGI
    Django runs the layers below it in a thread."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)  # type: ignore[no-any-return]


class NotesResponseMiddleware(MiddlewareMixin):
    """Django's usual middleware (sync ``process_response``, as SessionMiddleware's, which saves the
    session there): notes each response it is given, in ``finished``."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        finished.append(f"process_response {response.status_code}")
        return response


class SlowBeforeViewMiddleware:
    """A sync middleware below AioRequestMiddleware that works ``?pre=`` seconds before the view (a
    session store or an authentication backend that is slow)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        time.sleep(float(request.GET.get("pre", "0")))
        return self.get_response(request)  # type: ignore[no-any-return]

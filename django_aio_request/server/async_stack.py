"""Which middleware below ``AioRequestMiddleware`` keeps async views from being cancelled at the deadline.

Under an ASGI server Django picks each middleware's mode from the view up: a layer that can run
either way runs as the layer below it does, a sync-only one (``async_capable`` not true, as in
middleware written before Django 3.1 without ``MiddlewareMixin``) in sync mode, an async-only one in
async mode (``BaseHandler.load_middleware``). So one sync-only middleware below
``AioRequestMiddleware`` puts it in sync mode too, where it cannot cancel anything, unless an
async-only layer between them switches back to async. ``CANCEL_ASYNC_VIEWS_ON_TIMEOUT`` then
cancelled nothing: an async view given 0.3 s answered 200 after 3 s, and nothing said why. In async
mode with sync-only middleware below, the view runs on the event loop behind that middleware's
thread (``async_to_sync`` inside ``sync_to_async``), and asgiref passes the cancellation through the
thread to it from 3.8.0 on (before, the view ran on to its end). The system check W012 names such
middleware, and the first request an ASGI handler serves logs the same warning, for servers that
run no checks.
"""

import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.signals import request_started, setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_aio_request.conf.schema import SETTING

__all__ = ["cancellation_crosses_threads", "sync_only_below", "warning_text", "watch_first_request"]

logger = logging.getLogger("django_aio_request.server.middleware")

_FIRST_REQUEST = "django_aio_request.server.async_stack.first_request"


def sync_only_below(middleware: object) -> list[str]:
    """The entries of ``middleware`` (``settings.MIDDLEWARE``) below the first ``AioRequestMiddleware``
    (or subclass) that Django can only run in sync mode, each once, when they keep async views from
    being cancelled: when they put ``AioRequestMiddleware`` in sync mode, or with an asgiref that does
    not pass a cancellation through a thread (:func:`cancellation_crosses_threads`). [] without an
    ``AioRequestMiddleware``. An entry that cannot be imported is skipped: Django reports it when it
    loads the middleware. One that raises ``MiddlewareNotUsed`` as it is made is counted too: that is
    known only by making it."""
    from django_aio_request.server.middleware import AioRequestMiddleware

    if not isinstance(middleware, Sequence) or isinstance(middleware, str):
        return []
    below: list[Any] | None = None  # None until AioRequestMiddleware is met: then the factories below it
    for path in middleware:
        try:
            factory = import_string(path) if isinstance(path, str) else None
        except Exception:
            continue
        if factory is None:
            continue
        if below is None:
            if isinstance(factory, type) and issubclass(factory, AioRequestMiddleware):
                below = []
        else:
            below.append((path, factory))
    if not below:
        return []
    found: list[str] = []
    handler_is_async = True  # the ASGI handler's own, below every middleware
    for path, factory in reversed(below):  # as load_middleware() goes, from the view up
        can_sync, can_async = getattr(factory, "sync_capable", True), getattr(factory, "async_capable", False)
        handler_is_async = bool(can_async) if handler_is_async or not can_sync else False
        if not can_async and path not in found:
            found.append(path)
    if handler_is_async and cancellation_crosses_threads():
        return []  # AioRequestMiddleware runs async, and the cancellation reaches the view through the threads
    found.reverse()  # in MIDDLEWARE's order
    return found


def cancellation_crosses_threads() -> bool:
    """Whether asgiref's ``sync_to_async`` passes a cancellation on to the ``async_to_sync`` calls its
    thread makes (``task_context``, from asgiref 3.8.0): then an async view below sync-only
    middleware is cancelled, as long as ``AioRequestMiddleware`` itself runs async."""
    import asgiref

    try:
        major, minor = (int(part) for part in asgiref.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return True  # a version it does not name or write plainly: a recent one, as any release is
    return (major, minor) >= (3, 8)


def cancelling(setting: object) -> bool:
    """Whether ``AIO_REQUEST`` (as written, not yet checked) turns cancelling async views on."""
    try:
        return bool(setting.get("CANCEL_ASYNC_VIEWS_ON_TIMEOUT") is True)  # type: ignore[attr-defined]
    except Exception:
        return False


def warning_text(below: Sequence[str]) -> str:
    names = ", ".join(below)
    return (
        f"CANCEL_ASYNC_VIEWS_ON_TIMEOUT is on, but MIDDLEWARE has middleware below AioRequestMiddleware"
        f" that cannot run async ({names}): under an ASGI server Django runs what is below it, the view"
        f" included, through that middleware's thread, and async views are not cancelled at their deadline"
        f" (with an async-only middleware between them, they are from asgiref 3.8 on)"
    )


HINT = (
    "give that middleware async_capable = True (django.utils.deprecation.MiddlewareMixin does), move it"
    " above AioRequestMiddleware, or set CANCEL_ASYNC_VIEWS_ON_TIMEOUT to False"
)


def _first_request(sender: Any, **kwargs: Any) -> None:
    """The process's first request: under an ASGI handler, warn if async views cannot be cancelled."""
    # Only the thread that took the receiver off goes on: two first requests at once warn once.
    if not request_started.disconnect(dispatch_uid=_FIRST_REQUEST):
        return
    from django.core.handlers.asgi import ASGIHandler

    if not (isinstance(sender, type) and issubclass(sender, ASGIHandler)):
        return
    if not cancelling(getattr(settings, SETTING, None)):
        return
    below = sync_only_below(getattr(settings, "MIDDLEWARE", None))
    if below:
        logger.warning("%s; %s", warning_text(below), HINT)


def watch_first_request() -> None:
    """Look at the stack once, at the next request (``AppConfig.ready()``, and again after
    ``override_settings`` changes the middleware or ``AIO_REQUEST``)."""
    request_started.connect(_first_request, dispatch_uid=_FIRST_REQUEST)


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("MIDDLEWARE", SETTING):
        watch_first_request()

"""Which middleware below ``AioRequestMiddleware`` keeps async views from being cancelled at the deadline.

Under an ASGI server Django runs middleware in async mode only down to the first one that cannot
run async (``async_capable`` not true, as in middleware written before Django 3.1 without
``MiddlewareMixin``). That one runs in a thread, and the middleware above it, ``AioRequestMiddleware``
included, runs in sync mode too (Django picks sync for a layer that can run either way when the
layer below it is sync), unless an async-only layer between them switches back to async; either
way the view runs under that thread. ``CANCEL_ASYNC_VIEWS_ON_TIMEOUT`` then cancels nothing: an async view
given 0.3 s answered 200 after 3 s, and nothing said why. The system check W012 names such
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

__all__ = ["sync_only_below", "warning_text", "watch_first_request"]

logger = logging.getLogger("django_aio_request.server.middleware")

_FIRST_REQUEST = "django_aio_request.server.async_stack.first_request"


def sync_only_below(middleware: object) -> list[str]:
    """The entries of ``middleware`` (``settings.MIDDLEWARE``) below the first ``AioRequestMiddleware``
    (or subclass) that Django can only run in sync mode, each once. [] without an ``AioRequestMiddleware``.
    An entry that cannot be imported is skipped: Django reports it when it loads the middleware. One
    that raises ``MiddlewareNotUsed`` as it is made is named too: that is known only by making it."""
    from django_aio_request.server.middleware import AioRequestMiddleware

    if not isinstance(middleware, Sequence) or isinstance(middleware, str):
        return []
    found: list[str] | None = None  # None until AioRequestMiddleware is met
    for path in middleware:
        try:
            factory = import_string(path) if isinstance(path, str) else None
        except Exception:
            continue
        if factory is None:
            continue
        if found is None:
            if isinstance(factory, type) and issubclass(factory, AioRequestMiddleware):
                found = []
        elif not getattr(factory, "async_capable", False) and path not in found:  # what load_middleware() reads
            found.append(path)
    return found or []


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

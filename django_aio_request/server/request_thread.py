"""Work that must wait for a request's sync code under ASGI, which a cancellation does not stop.

Under an ASGI server Django runs a request's sync views and sync middleware through asgiref's
``sync_to_async(thread_sensitive=True)``, all on one thread per request: the single-thread executor
of the ``ThreadSensitiveContext`` that ``ASGIHandler`` enters for each request. When the request's
task is cancelled (Django 5 cancels it when the client disconnects; AioRequestMiddleware at an async
view's deadline, with sync middleware below it), ``sync_to_async`` gives up waiting at once, but
nothing can stop the thread: the sync view runs to its end. Work submitted to the same executor runs
after it, in order.
"""

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from asgiref.sync import AsyncToSync, SyncToAsync

__all__ = ["after_sync_code"]

logger = logging.getLogger(__name__)


def after_sync_code(work: Callable[[], None]) -> bool:
    """Run ``work`` on this request's sync thread once the code running there now has returned.

    False (``work`` not run) when the request has no such thread: no sync code ran in it (an async
    view and middleware), or asgiref sends sync code elsewhere (a parent sync thread, when the ASGI
    application is called from ``async_to_sync``). Then nothing of the request is left running.
    """
    if getattr(AsyncToSync.executors, "current", None) is not None:
        return False  # sync code runs on the parent thread, which waits for this task
    owner = SyncToAsync.thread_sensitive_context.get(None)
    executor = None if owner is None else SyncToAsync.context_to_thread_executor.get(owner)
    if not isinstance(executor, ThreadPoolExecutor):
        return False
    try:
        future = executor.submit(work)
    except RuntimeError:  # shut down: nothing runs on it any more
        return False
    future.add_done_callback(_log_failure)
    return True


def _log_failure(future: "Future[None]") -> None:
    error = future.exception()
    if error is not None:  # a bug: said, not lost in a future nobody reads
        logger.error("work queued after a cancelled request's sync code failed", exc_info=error)

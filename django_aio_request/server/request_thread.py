"""Work that must wait for a request's sync code under ASGI, which a cancellation does not stop.

Under an ASGI server Django runs a request's sync views and sync middleware through asgiref's
``sync_to_async(thread_sensitive=True)``, all on one thread per request: the single-thread executor
of the ``ThreadSensitiveContext`` that ``ASGIHandler`` enters for each request, or, when a sync-only
middleware sits above (WhiteNoise, say), that middleware's thread, which waits in ``async_to_sync``
for the async middleware below it and meanwhile runs the sync code they hand back to it (asgiref's
``CurrentThreadExecutor``). When the request's task is cancelled (Django 5 cancels it when the client
disconnects; AioRequestMiddleware at an async view's deadline), ``sync_to_async`` gives up waiting
at once, but nothing can stop the thread: the sync view runs to its end. Work submitted to the same
executor runs after it, in order.
"""

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future

from asgiref.sync import AsyncToSync, SyncToAsync

__all__ = ["after_sync_code"]

logger = logging.getLogger(__name__)


def after_sync_code(work: Callable[[], None]) -> bool:
    """Run ``work`` on this request's sync thread once the code running there now has returned.

    Call it from the request's task before that task ends: a ``CurrentThreadExecutor`` runs work
    only while its thread waits for the task. False (``work`` not run) when the request has no such
    thread (no sync code ran in it: an async view and middleware) or it takes no more work; then
    nothing of the request is left running there.
    """
    executor: Executor | None = getattr(AsyncToSync.executors, "current", None)  # a sync caller above
    if executor is None:
        owner = SyncToAsync.thread_sensitive_context.get(None)
        executor = None if owner is None else SyncToAsync.context_to_thread_executor.get(owner)
    if executor is None:
        return False
    try:
        future = executor.submit(work)
    except RuntimeError:  # shut down, or quit waiting: nothing runs on it any more
        return False
    future.add_done_callback(_log_failure)
    return True


def _log_failure(future: "Future[None]") -> None:
    error = future.exception()
    if error is not None:  # a bug: said, not lost in a future nobody reads
        logger.error("work queued after a cancelled request's sync code failed", exc_info=error)

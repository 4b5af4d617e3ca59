"""Whether the current thread runs an asyncio event loop: where nothing may wait on other threads."""

import asyncio
import contextlib
import os
import sys
import warnings

__all__ = ["BlockingCallWarning", "runs_event_loop", "warn_if_blocking_the_loop"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_CONTEXTLIB = contextlib.__file__


class BlockingCallWarning(RuntimeWarning):
    """A sync call made on a thread that runs an asyncio event loop: every task of the loop waits for it."""


def runs_event_loop() -> bool:
    """True on a thread whose event loop is running (a wait there stops every task on the loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def warn_if_blocking_the_loop() -> None:
    """Warn when a sync call is made on the thread of a running event loop (an async view calling
    ``request()``): the whole loop, every other request of an ASGI worker included, waits for the
    call, up to its deadline (a review: four async views each calling a downstream that took 1 s
    were served one after another, in 4.2 s, and another request waited 4.19 s). A warning, not an
    error: the call itself is right, only slow for the others. ``arequest()`` is the async call.

    ``asyncio._get_running_loop()`` rather than ``get_running_loop()``: no exception raised and
    caught on every sync call, where nearly all run on no loop."""
    if asyncio._get_running_loop() is None:
        return
    warnings.warn(
        "a sync client call (request()) made on a thread running an asyncio event loop blocks every task of"
        " the loop until it ends (up to its deadline); in async code use 'async with client.arequest(...)'",
        BlockingCallWarning,
        stacklevel=_callers_level(),
    )


def _inside(filename: str) -> bool:
    return filename.startswith(_PACKAGE) or filename == _CONTEXTLIB


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame outside this package and contextlib: the caller's line."""
    frame = sys._getframe(2)  # the caller of warn_if_blocking_the_loop()
    level = 2
    while frame is not None and _inside(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level

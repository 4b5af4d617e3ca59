"""How long this process's full garbage collections stopped it, served at ``/demo/stats``.

A collection of the oldest generation walks every object the process tracks, and no other thread
of the process runs meanwhile. In a Django service every request leaves reference cycles behind
(its request object, the session, the messages storage and auth's lazy user point at each other),
so such collections come every few seconds under load, and each stops every request in flight:
a pause no hedge to the same process can cut. ``benchmarks/load.py`` reads them from billing to
tell its tail from billing's slow requests (docs/benchmarks.md).

Times are wall-clock (``time.time()``) when the collection started, comparable between the
processes of one machine, and the seconds it took.
"""

import collections
import gc
import threading
import time
from typing import Any

_KEPT = 1000  # the latest pauses; a full collection comes every few seconds at most

_latest: collections.deque[tuple[float, float]] = collections.deque(maxlen=_KEPT)
_started: dict[int, tuple[float, float]] = {}  # thread id -> (wall, perf_counter) of the collection running
_lock = threading.Lock()
_installed = False


def _callback(phase: str, info: dict[str, Any]) -> None:
    if info["generation"] != 2:
        return
    thread = threading.get_ident()
    if phase == "start":
        _started[thread] = (time.time(), time.perf_counter())
        return
    started = _started.pop(thread, None)
    if started is not None:
        _latest.append((started[0], time.perf_counter() - started[1]))


def install() -> None:
    """Record this process's full collections from now on (once, however often it is called)."""
    global _installed
    with _lock:
        if not _installed:
            gc.callbacks.append(_callback)
            _installed = True


def latest() -> list[tuple[float, float]]:
    """The latest full collections: (wall-clock time it started, seconds it took), oldest first."""
    return list(_latest)

"""Live gauges of worker processes that died with nobody to mark them dead.

In prometheus_client's multiprocess mode a ``live*`` gauge (the breaker state, load shedding's limit
and queues) adds up one file per process, and a process counts as alive until somebody removes its
files with ``mark_process_dead``: gunicorn's ``child_exit`` hook does (docs/metrics.md). Servers
without such a hook do not: under ``uvicorn --workers``, a worker SIGKILLed (the OOM killer) with
its breaker open was replaced, and its ``open`` stayed in the gauge for good, so
``AioRequestCircuitOpen`` fired while every live circuit was closed.

So each process that records metrics looks, every :data:`SWEEP_INTERVAL` seconds from its recording
thread, for live-gauge files whose process is gone, and removes them as ``mark_process_dead`` would.
A file is removed only when both say so: no process of that number exists here, and the file has
not been touched for :data:`STALE_AFTER` seconds (each process touches its own at every sweep, once
it records metrics). The second spares a process this one cannot see only while it records: the
directory must not be shared across PID namespaces (containers) anyway, since prometheus_client
names its files by pid and two processes of one number there write one file. Counters and
histograms of dead processes are kept, as prometheus_client keeps them: totals must not drop.
"""

import logging
import multiprocessing.util
import os
import re
import threading
import time

from django_aio_request.metrics.deferred import after_each_round
from django_aio_request.metrics.prometheus import MULTIPROCESS

logger = logging.getLogger(__name__)

SWEEP_INTERVAL = 2.0  # seconds between two sweeps of one process
STALE_AFTER = 3 * SWEEP_INTERVAL  # a dead process's file untouched this long is removed

# prometheus_client's live modes (livesum, liveall, livemax, livemin, livemostrecent): gauge_<mode>_<pid>.db
_LIVE_FILE = re.compile(r"gauge_live[a-z]+_([0-9]+)\.db")
# Any metric file of a process: counter_<pid>.db, histogram_<pid>.db, gauge_<mode>_<pid>.db, ...
_ANY_FILE = re.compile(r"[a-z]+(?:_[a-z]+)?_([0-9]+)\.db")

_lock = threading.Lock()
_next_sweep = 0.0


def _directory() -> str | None:
    """The multiprocess directory, read as prometheus_client reads it."""
    legacy = os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112 - the old name prometheus_client still reads
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", legacy)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


#: Files a sweep could not touch or remove (not ours to remove in a sticky directory, say), warned
#: of once each: one such file stopped every sweep, and the dead files listed after it stayed for good.
_unremovable: set[str] = set()
_UNREMOVABLE_MAX = 1000


def sweep(directory: str, now: float | None = None) -> list[int]:
    """Touch this process's live-gauge files in ``directory`` and remove those of dead processes
    untouched for :data:`STALE_AFTER` seconds; the pids whose files were removed. A file it cannot
    touch or remove is warned of (once) and left; the others are swept all the same."""
    me, now = os.getpid(), time.time() if now is None else now
    removed: set[int] = set()
    gauges: set[int] = set()  # the pids whose live-gauge files were removed
    emptied: set[str] = set()  # the empty files of exited processes removed, by name
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _LIVE_FILE.fullmatch(entry.name)
            if match is None:
                # Any other file of a dead process is kept (its totals must not drop), but for an empty
                # one: prometheus_client creates a file before it sizes it, a process killed in between
                # leaves it at 0 bytes, and every scrape then fails on it (struct.error, a 500) for good
                # (prometheus/client_python#1199). Empty, it holds nothing to lose.
                match = _ANY_FILE.fullmatch(entry.name)
                if match is None or int(match[1]) == me:
                    continue
                try:
                    info = entry.stat()
                    if info.st_size == 0 and now - info.st_mtime > STALE_AFTER and not _alive(int(match[1])):
                        os.remove(entry.path)
                        removed.add(int(match[1]))
                        emptied.add(entry.name)
                except OSError:  # removed meanwhile, or not ours to remove: the next sweep looks again
                    pass
                continue
            pid = int(match[1])
            try:
                if pid == me:
                    os.utime(entry.path)
                elif now - entry.stat().st_mtime > STALE_AFTER and not _alive(pid):
                    os.remove(entry.path)
                    removed.add(pid)
                    gauges.add(pid)
            except FileNotFoundError:  # another process's sweep removed it first
                continue
            except OSError as error:
                if entry.path not in _unremovable and len(_unremovable) < _UNREMOVABLE_MAX:
                    _unremovable.add(entry.path)
                    logger.warning("could not sweep the live gauge file %s: %s", entry.path, error)
    if gauges:
        logger.info("removed the live gauges of exited processes %s from %s", sorted(gauges), directory)
    if emptied:
        # Not gauges: a file prometheus_client made and never sized (a review: "removed the live gauges"
        # was said of an empty histogram file).
        logger.info("removed the empty metric files of exited processes %s from %s", sorted(emptied), directory)
    return sorted(removed)


def _sweep_now_and_then() -> None:
    """After each recording round: a sweep at most every SWEEP_INTERVAL seconds (in multiprocess mode)."""
    global _next_sweep
    if time.monotonic() < _next_sweep or not _lock.acquire(blocking=False):
        return
    try:
        _next_sweep = time.monotonic() + SWEEP_INTERVAL
        directory = _directory()
        if directory:
            sweep(directory)
    except OSError as error:  # the directory went away or is unreadable: said, and tried again later
        logger.warning("could not sweep the live gauges of exited processes: %s", error)
    finally:
        _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _next_sweep
    _lock = threading.Lock()  # the forking parent's recording thread may have held it
    _next_sweep = 0.0


def _forget_own_live_gauges() -> None:
    """At the exit of a ``multiprocessing`` child, after its last observations were recorded: its
    live gauges no longer count, at once rather than at the next sweep. A pool worker's copy of the
    parent's breakers counted until then: 14 breakers for about 6 s where 2 workers had 2 (a review)."""
    directory = _directory()
    if not directory:
        return
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
    except OSError as error:
        logger.warning("could not remove this process's live gauges at its exit: %s", error)


def _at_multiprocessing_exit(_: object) -> None:
    """In a ``multiprocessing`` child: forget its live gauges when it ends, after the flush that
    ``deferred`` registers at priority 0 (negative ones run after). A pool worker ended by
    ``terminate()`` (SIGTERM) runs no finalizer: the sweep removes its files then."""
    multiprocessing.util.Finalize(None, _forget_own_live_gauges, exitpriority=-10)


if MULTIPROCESS:
    os.register_at_fork(after_in_child=_after_fork_in_child)
    after_each_round(_sweep_now_and_then)
    multiprocessing.util.register_after_fork(_forget_own_live_gauges, _at_multiprocessing_exit)
    if multiprocessing.parent_process() is not None:  # imported in such a child, after its fork or spawn
        _at_multiprocessing_exit(None)

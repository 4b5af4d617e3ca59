"""Publishes this process's circuit breakers to the database for Django admin, and obeys admin's overrides.

Breakers live in memory, one per client per process, so no single process can show what all
workers see. One daemon thread per process (started when the first client with a breaker is
built; in a forked child, which keeps the parent's clients, at the first call of one of them or
the first build there, see ``Publisher.after_fork``; for a client built while Django loads its
apps, at its first call or the first build after they are loaded, see ``Publisher.watch``) does, at
once when it starts, at once again
when another client with a breaker is built, and every ``interval`` seconds (1 s):

1. read ``BreakerOverride`` and apply each to the breaker of its client (``set_override``), and
   lift overrides that were removed; a row whose ``mode`` is not an ``Override`` (written by a
   script, a fixture or SQL: admin writes none) is skipped as if absent, with one warning naming it;
2. upsert this process's ``BreakerReport`` rows from each built client's ``breaker.snapshot()``
   (one statement) with the calls of the last ``COUNT_WINDOW`` seconds, then stamp them with the
   database's clock: seen now, expiring in ``heartbeat_ttl`` seconds (a few intervals); delete the
   rows of clients no longer built;
3. insert the transitions a listener queued (the listener only appends to a bounded deque:
   nothing on the request path touches the database);
4. now and then, delete transitions older than ``CIRCUIT_BREAKER_HISTORY_DAYS`` (7) and expired
   reports (processes that stopped publishing: admin stopped counting them when they expired).

Building a client with a breaker waits for the round that reads its overrides, at most
``FIRST_READ_WAIT`` seconds (0.25), so that a process started after an operator forced an
endpoint open makes no call to it: with a healthy database the override is applied before the
client is returned. A database that does not answer by then costs that one build the wait, and
no other build waits until a round has finished (the round then applies the overrides as usual).
A build on a thread running an event loop (the first ``clients["billing"]`` in an async view) does
not wait, as waiting would stall every task of the loop: its client calls by the breaker's own
state until the round applies the overrides; when they are not read within ``FIRST_READ_WAIT``,
the loop logs the same warning and builds stop waiting, as after a build whose wait ran out.

When the database is down, calls go on with the breakers as they are (the last overrides
applied stay applied), a warning is logged once per outage and once on recovery, transitions
wait in the deque (the oldest are dropped beyond ``QUEUE_LENGTH``), and nothing raises into callers.

A process that exits (a deploy's SIGTERM, gunicorn's ``--max-requests``) publishes a last round
as it does, within ``EXIT_WAIT`` seconds: what it queued since its last round was lost, the circuit
openings of recycled workers among it (``publish_at_exit``).
"""

import asyncio
import collections
import contextlib
import datetime
import functools
import logging
import os
import random
import re
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from types import CodeType, FrameType, FunctionType
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.db import DatabaseError, connections, router, transaction
from django.db.backends.base.creation import TEST_DATABASE_PREFIX
from django.db.models.functions import Now
from django.utils import timezone

from django_aio_request.breaker.cache_store import CacheCircuitStore
from django_aio_request.breaker.circuit_breaker import (
    CircuitSnapshot,
    CircuitTransition,
    DefaultCircuitBreaker,
    MemoryCircuitStore,
    Override,
)
from django_aio_request.conf.current import current
from django_aio_request.conf.schema import AioRequestSettings
from django_aio_request.core.after_fork import ForkWaits
from django_aio_request.core.client import Client
from django_aio_request.models import (
    COUNT_WINDOW,
    LOCAL_STORE,
    STORE_LENGTH,
    UNREACHABLE,
    BreakerOverride,
    BreakerReport,
    BreakerTransition,
)
from django_aio_request.named_clients import clients
from django_aio_request.round_bound import bounded

logger = logging.getLogger(__name__)

QUEUE_LENGTH = 10_000
# A report counts for HEARTBEAT_MISSES publishing intervals (at least MIN_HEARTBEAT_TTL seconds) after
# it was written: a process that skips a round under load is not dropped, one that died is within seconds.
HEARTBEAT_MISSES = 5
MIN_HEARTBEAT_TTL = 5.0
PRUNE_EVERY = 60.0  # seconds between two prunes by one process
DEFAULT_INTERVAL = 1.0  # seconds between rounds until the setting was read once (its default)
# Seconds building a client with a breaker waits for the round that reads its overrides: a fresh
# worker obeys admin's force open from its first call, and a hanging database costs one build that long.
FIRST_READ_WAIT = 0.25
#: The most seconds an exiting process gives its last round (a database that hangs holds exit no longer).
EXIT_WAIT = 1.0
#: The most seconds a round's statement waits for a lock (round_bound.py): a write held by a lock no
#: longer keeps the next rounds from reading the overrides.
ROUND_LOCK_WAIT = 1.0

Key = tuple[str, str]  # (client name, endpoint)
Sample = tuple[float, int, int, int]  # (time.monotonic(), failures, successes, rejected) totals of a circuit


def _settings() -> AioRequestSettings:
    return current.settings


def history_days() -> float:
    """``AIO_REQUEST["CIRCUIT_BREAKER_HISTORY_DAYS"]``: how long transitions are kept (7 days)."""
    return _settings().circuit_breaker_history_days


def _moment(timestamp: float) -> datetime.datetime | None:
    """``timestamp`` (``time.time()``) as Django stores it: aware with ``USE_TZ``, else naive local time
    (what ``timezone.now()`` gives; an aware one makes SQLite refuse the whole round)."""
    if not timestamp:
        return None
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC if django_settings.USE_TZ else None)


def _ratio(failures: int, successes: int) -> float:
    total = failures + successes
    return failures / total if total else 0.0


def store_name(breaker: DefaultCircuitBreaker[str, Any]) -> str:
    """ "local" for counts of this process alone, else the cache alias all processes share counts in,
    marked while that cache does not answer, failing or hanging (the store counts in this process
    until it does)."""
    store = breaker.store
    if isinstance(store, MemoryCircuitStore):
        return LOCAL_STORE
    alias = str(getattr(store, "alias", type(store).__name__))
    # A cache's alias may hold what no database's text does (a byte that is not UTF-8 read from the
    # environment is a lone surrogate; a NUL): written as it is, every round failed (a review).
    alias = alias.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    alias = alias[: STORE_LENGTH - len(UNREACHABLE)]
    return alias + UNREACHABLE if getattr(store, "deciding_alone", False) else alias


def built_breakers() -> list[tuple[str, DefaultCircuitBreaker[str, Any]]]:
    """(client name, breaker) of every client built so far in this process that has a breaker."""
    found = []
    for name, client in clients.built():
        breaker = client.circuit_breaker
        if isinstance(breaker, DefaultCircuitBreaker) and not _is_fake(client):
            found.append((name, breaker))
    return found


def _totals_at_fork(breaker: DefaultCircuitBreaker[str, Any]) -> list[tuple[str, int, int, int]]:
    """(endpoint, failures, successes, rejected) totals of each circuit, read in a forked child's at-fork
    handler: without the breaker's lock, which a thread of the parent (absent here) may have held; the
    child runs one thread then, so nothing changes them meanwhile."""
    circuits = list(breaker._circuits.items())
    return [(str(scope), c.failures_total, c.successes_total, c.rejected_total) for scope, c in circuits]


def _is_fake(client: Client) -> bool:
    """A client of ``django_aio_request.testing.fake_client``: a test's, never published nor overridden.

    Imports nothing: a process that never imported the testing module has no fake. The publisher's
    thread asks this, and its first-time import of that module was a window for gunicorn --preload's
    fork: a worker forked during it kept the import's lock, and its own rounds hung on it for good."""
    testing = sys.modules.get("django_aio_request.testing")
    return testing is not None and isinstance(client.transport, testing.FakeDownstream)


def _forced_by_tests() -> "frozenset[tuple[int, str]]":
    """``(id(breaker), endpoint)`` of each circuit an open ``force_breaker()`` block holds: no round
    changes its override. Imports nothing, as :func:`_is_fake`."""
    testing = sys.modules.get("django_aio_request.testing")
    return frozenset() if testing is None else testing.forced_circuits()


class Publisher:
    def __init__(
        self, *, interval: float | None = None, database: str | None = None, first_read_wait: float = FIRST_READ_WAIT
    ) -> None:
        self._interval = interval
        self.database = database
        self.first_read_wait = first_read_wait
        # The breakers this publisher listens to, with their client's name: a forked child's are
        # the same objects (the registry keeps its clients across fork()), see after_fork.
        self._watching: weakref.WeakKeyDictionary[DefaultCircuitBreaker[str, Any], str] = weakref.WeakKeyDictionary()
        self._tests_seen = False  # Django's test environment was set up in this process (see _outside_the_tests)
        # Circuits forced by an override they came to life under (see _known_overrides): what their
        # reports say of when they changed, the override's changed_at, while the breaker's changed_at
        # is the one it had then. Kept across fork(): a --preload worker's copy of the master's
        # breaker reported the master's moment (a review).
        self._forced_at_start: dict[Key, tuple[datetime.datetime, float]] = {}
        self._reset()

    @property
    def interval(self) -> float:
        """Seconds between rounds: the one given, else ``CIRCUIT_BREAKER_PUBLISH_INTERVAL`` as set now."""
        return self._interval if self._interval is not None else _settings().circuit_breaker_publish_interval

    @property
    def heartbeat_ttl(self) -> float:
        """Seconds a report counts after it was written, unless the next round refreshes it."""
        return max(MIN_HEARTBEAT_TTL, HEARTBEAT_MISSES * self.interval)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # Bounded by hand, always dropping the oldest: a maxlen deque drops from the other end on
        # extendleft, which would lose the newest transitions when a failed round puts its own back.
        self._queue: collections.deque[tuple[str, CircuitTransition[Any]]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # a client was built: a round now, not at the next interval
        # Clients watched so far, and how many of them a round has read the overrides for (or failed
        # to): a build waits, on the condition, until the second reaches its number.
        self._read_done = threading.Condition()
        self._watched = 0
        self._read = 0
        self._late = False  # a build's wait ran out and no round has finished since: builds do not wait
        self._published: set[Key] = set()
        # The overrides this publisher set from the database, by (client, endpoint), with the one in
        # force before it (None, or one set in the process itself: force_breaker() in a test,
        # set_override() in code). Only those are lifted when their row goes, and what was there
        # before comes back: the process's own override is not admin's to lift.
        self._applied: dict[Key, tuple[Override, Override | None]] = {}
        # A breaker that comes to life under an override (a new process, a recycled or forked worker,
        # a management command, a client built late) takes it with no transition: none of its
        # circuit's, and written as one, each such process added one to the history and made admin's
        # "changed" say the circuit changed then (a review: `manage.py circuit_breakers` run twice
        # showed "2 processes: 2 forced open, changed 0 s ago", with no server running). Told without
        # clocks (another host's may be behind: a second review lost an operator's change so): the
        # process's first attempt to read the overrides, or a breaker's first read of an override row
        # the round before already held, and only for a circuit that never changed (one that opened
        # before the read lived through the change). The override rows of the last round, every
        # client's: (client, endpoint, mode, changed_at).
        self._known_overrides: set[tuple[str, str, str, datetime.datetime]] = set()
        self._read_any = False  # a round of this process (since its start or fork) tried to read them
        self._read_breakers: weakref.WeakSet[DefaultCircuitBreaker[str, Any]] = weakref.WeakSet()
        self._quiet = threading.local()  # .on: the round is taking an override so (_on_transition)
        # Override rows whose mode is not an Override, as (client, endpoint, mode): warned of once, while
        # they stay so (one such row failed every round, for every client, before it was skipped).
        self._invalid: set[tuple[str, str, str]] = set()
        self._history: dict[Key, collections.deque[Sample]] = {}
        self._first_round = True
        self._databases: tuple[tuple[str, Any], ...] | None = None  # where the last round wrote (_where)
        self._number = 0  # the clients watched when the round running began
        self._down = False
        self._doubted = False  # in a test process, the last round failed once (see _run_once)
        self._outside_logged = False
        self._memory_logged = False
        self._next_prune = 0.0

    # -- the request path: only in memory --------------------------------------------------------

    def watch(self, name: str, client: Client) -> None:
        """Listen to ``client``'s breaker, make sure the thread runs, have it read the overrides now,
        and wait for that, at most ``first_read_wait`` seconds, unless this thread runs an event loop
        (``registry`` calls this on build, after the client is in the registry, where the round finds it)."""
        breaker = client.circuit_breaker
        if not isinstance(breaker, DefaultCircuitBreaker):
            return
        breaker.add_listener(functools.partial(self._on_transition, name))
        self._watching[breaker] = name
        with self._read_done:
            self._watched += 1
            number = self._watched
        if not apps.ready:
            # Built while Django loads its apps (a models module, or an app's ready() run before this
            # app's, which connects the receiver and then watches what was built). Such a client was
            # never published nor overridden (a review: admin's "forced open" did nothing in a
            # one-client project). No round may read the database yet, and no thread starts now: its
            # first round, right after the apps load, is when gunicorn's --preload forks, and a worker
            # forked while that round imported a module for the first time kept the import's lock with
            # no thread to release it, its own rounds stuck for good (a second review: 1-3 of 12
            # workers called an endpoint forced open). The first call after the apps load starts the
            # thread and waits for the overrides, as a build does, or the next build does.
            vars(breaker)["execute"] = functools.partial(self._first_call, breaker, name, number)
            return
        self.start()
        self._wake.set()
        # A store shared through a cache: its first read of the endpoint starts now, beside the
        # overrides', and the build waits for both within first_read_wait (cache_store.read_now).
        store = breaker.store if isinstance(breaker.store, CacheCircuitStore) else None
        target = store.read_now(client.endpoint) if store is not None else 0
        started = time.monotonic()
        self._await_read(name, number)
        if store is not None and self._may_wait():
            store.wait_for_read(target, self.first_read_wait - (time.monotonic() - started))

    def _may_wait(self) -> bool:
        """Whether a build may wait here: not on this publisher's thread, nor on an event loop's."""
        if self.first_read_wait <= 0 or threading.current_thread() is self._thread:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return True
        return False

    def _await_read(self, name: str, number: int) -> None:
        if self.first_read_wait <= 0 or threading.current_thread() is self._thread:
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._read_done:
            if self._late:  # the database has not answered a round since an earlier build gave up
                return
            if loop is not None:
                # Waiting here would stall every task of the loop (up to first_read_wait with a hanging
                # database): the client calls before the overrides are read, as after a wait that ran
                # out, and the loop looks at the end of the wait whether they were read.
                if self._read < number:
                    loop.call_later(self.first_read_wait, self._read_late, name, number)
                return
            if self._read_done.wait_for(lambda: self._read >= number, self.first_read_wait):
                return
            self._late = True
        self._warn_late(name, "")

    def _read_late(self, name: str, number: int) -> None:
        """On the event loop that built ``name`` without waiting, ``first_read_wait`` later: the
        warning, and no build waits until a round finishes, if the overrides are still not read."""
        with self._read_done:
            if self._late or self._read >= number:
                return
            self._late = True
        self._warn_late(name, " (built on an event loop's thread, which does not wait for them)")

    def _warn_late(self, name: str, where: str) -> None:
        logger.warning(
            "circuit breaker overrides not read within %s s (the database is slow or hangs): client %r%s "
            "calls before admin's overrides are applied; builds do not wait until a round finishes",
            self.first_read_wait,
            name,
            where,
        )

    def _overrides_read(self, number: int) -> None:
        """A round read the overrides of the clients watched up to ``number`` (or could not)."""
        with self._read_done:
            self._read = max(self._read, number)
            self._late = False
            self._read_done.notify_all()

    def _on_transition(self, name: str, transition: CircuitTransition[Any]) -> None:
        if transition.already_open:
            return  # the process that opened it wrote the opening; the state shows in this one's report
        if getattr(self._quiet, "on", False):
            self._quiet.at = transition.at  # an override the breaker came to life under: see _known_overrides
            return
        self._queue.append((name, transition))
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest transitions beyond ``QUEUE_LENGTH`` (deque operations are atomic)."""
        queue = self._queue
        while len(queue) > QUEUE_LENGTH:
            with contextlib.suppress(IndexError):
                queue.popleft()

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._import_what_rounds_use()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop, self._wake), daemon=True, name="aio-request-breakers"
            )
            self._thread.start()

    def _import_what_rounds_use(self) -> None:
        """Import, on the caller's thread, the modules a round would import for the first time: the SQL
        compiler of each database it uses, which Django imports at a process's first query. A fork
        (gunicorn --preload: a client looked up in urls.py, the build's wait over) while the thread
        imported it left the child that import's lock, and the child's rounds hung on it for good."""
        for model in (BreakerOverride, BreakerReport, BreakerTransition):
            try:
                connections[self._db(model)].ops.compiler("SQLCompiler")
            except Exception:  # a database the settings cannot open: the round reports it
                continue

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._wake.set()
        if thread is not None:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def publish_at_exit(self, timeout: float = EXIT_WAIT) -> None:
        """Stop the thread and run a last round, all within ``timeout`` seconds; nothing if the thread
        never ran in this process. Without it, the transitions queued since the last round (up to an
        interval) were lost with the process: a worker recycled by gunicorn's ``--max-requests``
        after it opened a circuit left no opening in admin's history (18-19 of 20 in a review)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        started = time.monotonic()
        self.stop(timeout)
        if thread.is_alive():
            return  # a round is under way and does not end (the database hangs): it holds the queue
        try:
            moved = self._databases is not None and self._where() != self._databases
        except Exception:  # settings that cannot be read any more: no round either
            moved = True
        if moved:
            # The database the rounds wrote to is not the one the settings name now: a test run's,
            # which Django's test runner and pytest-django drop at the end and then name the real
            # one again. The last round wrote the test's circuits into that database.
            return
        last = threading.Thread(target=self._last_round, daemon=True, name="aio-request-breakers-exit")
        try:
            last.start()
        except RuntimeError:
            # Python 3.12.0-3.12.2 start no thread at interpreter shutdown (3.12.3 does again,
            # gh-113964): the round runs here, unbounded by ``timeout``. Before, the exit printed a
            # traceback and the last transitions were lost (5 of 10 runs of a review on 3.12.1).
            self._last_round()
            return
        last.join(max(0.0, timeout - (time.monotonic() - started)))

    def _last_round(self) -> None:
        try:
            self.run_once(background=True)
        finally:
            with contextlib.suppress(Exception):
                connections.close_all()

    def _run(self, stop: threading.Event, wake: threading.Event) -> None:
        interval = DEFAULT_INTERVAL
        while not stop.is_set():
            # The first round at once: the client that started the thread waits for its overrides.
            wake.clear()  # before the round: a client built during it wakes the next one
            with _ROUND_WORK:  # a fork waits for the round's database work: see _ROUND_WORK
                try:
                    self.run_once(background=True)
                except Exception:  # run_once handles database errors; anything else must not end the thread
                    logger.exception("circuit breaker publisher round failed")
                # This thread's own connections: closed after each round, whatever CONN_MAX_AGE says.
                # A round never reuses one the database dropped, and none stays open between rounds: one
                # kept (CONN_MAX_AGE > 0) held the test database of `manage.py test`, which Django could
                # then not drop ("being accessed by other users": exit 1, the database left behind).
                with contextlib.suppress(Exception):
                    connections.close_all()
            try:
                interval = self.interval
            except Exception:  # settings changed to something invalid: say so, keep the last interval
                logger.exception("circuit breaker publisher: AIO_REQUEST cannot be read; next round in %s s", interval)
            wake.wait(interval)

    def after_fork(self) -> None:
        """In a forked child (an at-fork handler: it starts no thread, takes no lock of the parent's).

        The parent's thread is gone, and the child keeps the parent's clients (``named_clients``):
        a reference kept across the fork is the client ``clients[name]`` returns. The first call of
        each breaker watched before the fork starts the thread again, as a build does, and waits for
        the round that reads the overrides (``_first_call``); until then it costs the child
        nothing, and after it its calls pay nothing either (``breaker.execute`` is the class's again).
        The parent's calls are the parent's to publish: the child's windows count from the totals at
        the fork, and the transitions the parent queued stay the parent's. The overrides the
        parent's rounds applied are on the child's copies of the breakers: the child's rounds lift
        them when their rows go.
        """
        applied, watching = self._applied, list(self._watching.items())
        self._reset()
        self._applied = dict(applied)
        now = time.monotonic()
        for breaker, name in watching:
            for scope, failures, successes, rejected in _totals_at_fork(breaker):
                self._history[(name, scope)] = collections.deque([(now, failures, successes, rejected)])
            # An attribute of the instance, read where the pipeline looks ``execute`` up, and removed
            # at the first call: no check on any later call.
            vars(breaker)["execute"] = functools.partial(self._first_call, breaker, name, 1)
        if watching:
            self._watched = 1  # the breakers kept: the first round in the child reads their overrides

    def _first_call(self, breaker: DefaultCircuitBreaker[str, Any], name: str, number: int, **call: Any) -> Any:
        """``breaker.execute`` at its first call where its build did not wait for the overrides (a
        forked child, a client built while the apps loaded): start the thread, have it read the
        overrides for the clients watched up to ``number`` and wait for that (at most
        ``first_read_wait``), then call as the class does. A call while the apps still load (an app's
        ready()) waits for nothing: no round reads the database before they are ready, and the next
        call waits instead."""
        if not apps.ready:
            return type(breaker).execute(breaker, **call)
        try:
            self.start()
            if self._read < number:
                self._wake.set()
            self._await_read(name, number)
        except Exception:  # e.g. no thread can be started: the call goes on with the breaker as it is
            logger.exception("circuit breaker publisher: cannot start in this process")
        finally:
            vars(breaker).pop("execute", None)  # after the wait: concurrent first calls wait as well
        return breaker.execute(**call)

    # -- one round -------------------------------------------------------------------------------

    def run_once(self, *, background: bool = False) -> bool:
        """Publish and apply overrides once; never raises. False when the database could not be used."""
        number = self._watched  # before listing the clients: those watched up to it are in the list
        try:
            return self._run_once(number, background)
        finally:
            self._overrides_read(number)  # done, or failed: builds waiting for it go on

    def _run_once(self, number: int, background: bool) -> bool:
        self._number = number
        breakers = built_breakers()
        if not breakers and not self._published and not self._queue:
            return True  # nothing to say: do not touch the database
        taken = self._take_transitions()
        try:
            if background:
                self._pin()
            where = self._where()  # an alias that names no database fails here, as in the round
            if self._outside_the_tests(where, background):
                self._queue.extendleft(reversed(taken))
                self._trim()
                return False
            self._databases = where
            self._round(breakers, taken)
        except Exception as error:
            self._queue.extendleft(reversed(taken))  # publish them when the database is back
            self._trim()  # the oldest go if the queue is full, never the ones queued meanwhile
            if self._tests_seen and _forbidden_by_a_test(error):
                # A SimpleTestCase running (no database allowed), not a database that is down: its
                # warning, with Django's hint to change the test class, came in every such run.
                logger.info("circuit breaker state is not published while a test allows no database: %s", error)
                return False
            if _missing_table(error) and _running_a_schema_command():
                # migrate making the tables, check on a database not migrated yet: nothing to tell.
                logger.debug("circuit breaker state is not published before the app's tables exist: %s", error)
                return False
            if background and self._tests_seen and not self._down and not self._doubted:
                # Said if the next round fails too. At a test run's end Django drops the test database
                # under a round and then names the real one again, which the next round finds and
                # leaves alone: no outage, where the round warned of one (6 of 10 runs).
                self._doubted = True
                logger.debug("circuit breaker state: a round failed, said if the next one fails too: %s", error)
                return False
            if not self._down:
                self._down = True
                logger.warning(
                    "circuit breaker state cannot be published to the database (%s: %s)%s; calls go on with "
                    "this process's breakers and the last overrides applied; retrying every %s s",
                    type(error).__name__,
                    error,
                    _MIGRATE if _missing_table(error) and not _in_memory(self) else "",
                    self.interval,
                )
            return False
        self._doubted = False
        if self._down:
            self._down = False
            logger.warning("circuit breaker state is published to the database again")
        return True

    def _outside_the_tests(self, where: tuple[tuple[str, Any], ...], background: bool) -> bool:
        """Whether this process runs tests (Django's test environment is, or was, set up: its test
        runner, pytest-django) and a database the round would use is not a test database.

        The tests' circuits (and force_breaker()'s transitions) went into the project's real database:
        `manage.py test` with only SimpleTestCase tests creates no test database, so the settings still
        name the real one, and the thread's own connection is not the one SimpleTestCase closes to
        tests; pytest-django names it before a test asks for the database and after the session.
        Then nothing is read or written, and the transitions wait for a test database."""
        if not self._tests_seen:
            self._tests_seen = _running_tests()
            if not self._tests_seen:
                return False
        if background:
            # SQLite locks whole tables between the connections of a database in memory (the test
            # database Django makes for SQLite), and a write that meets another connection's lock
            # fails at once, whatever the busy timeout: a round's write failed the test's own
            # ("database table is locked", 3 of 11 pytest runs and 3 of 4 manage.py test runs of a
            # review). The thread's rounds and the last one at exit leave such a database alone;
            # run_once() called by a test uses the test's own connection. Where they would have
            # written is kept all the same: the last round at exit writes nowhere else (see
            # publish_at_exit), and after the tests the settings name the real database again.
            shared = [(alias, name) for alias, name in where if _sqlite_in_memory(alias)]
            if shared:
                self._databases = where
                if not self._memory_logged:
                    self._memory_logged = True
                    logger.info(
                        "circuit breaker state is not published by its thread while tests run on SQLite in memory"
                        " (database %r): its table locks would fail the tests' own writes",
                        shared[0][0],
                    )
                return True
        outside = [(alias, name) for alias, name in where if not _is_test_database(alias)]
        if outside and not self._outside_logged:
            self._outside_logged = True
            logger.warning(
                "circuit breaker state is not published while tests run: database %r (%s) is not a test database",
                outside[0][0],
                outside[0][1],
            )
        elif not outside:
            self._outside_logged = False
        return bool(outside)

    def _take_transitions(self) -> list[tuple[str, CircuitTransition[Any]]]:
        taken = []
        while True:
            try:
                taken.append(self._queue.popleft())
            except IndexError:
                return taken

    def _db(self, model: type[Any]) -> str:
        return self.database or router.db_for_write(model)

    def _pin(self) -> None:
        """(On the publisher's own threads.) Give this thread's connection to each database a round
        writes to a copy of that database's settings as they are now, so that the round connects to
        the database its checks looked at (_outside_the_tests), whatever the settings say meanwhile.

        Django's test runner and pytest-django drop a test database and then name the real one again
        in the settings every connection shares: a round that found the test database's name, then
        connected once the real name was back, wrote the tests' breakers into the real database (4 and
        5 of 6 runs of ``manage.py test`` on PostgreSQL at a 0.1 s interval: tests/app/test_breaker_publisher.py)."""
        for alias in self._aliases():
            connection = connections[alias]
            if connection.connection is None:  # closed after each round: connects anew with these
                # Each value read as Django reads it, into a plain dict: dict() took a dict subclass's
                # raw values (a password worked out when read: every round failed), and copy.copy()
                # made the subclass anew, which one whose __new__ takes arguments, or whose
                # __setitem__ refuses or wraps values, cannot be (a review each).
                settings_dict = connections.settings[alias]
                connection.settings_dict = {key: settings_dict[key] for key in settings_dict}

    def _aliases(self) -> list[str]:
        """The aliases of the databases a round writes to, each once."""
        return list(dict.fromkeys(self._db(model) for model in (BreakerReport, BreakerTransition)))

    def _where(self) -> tuple[tuple[str, Any], ...]:
        """The databases a round writes to, as (alias, NAME) pairs."""
        return tuple((alias, connections[alias].settings_dict.get("NAME")) for alias in self._aliases())

    @staticmethod
    def _upsert(reports: Any, rows: list[Any], host: str, pid: int, ttl: datetime.timedelta) -> None:
        reports.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["client", "endpoint", "host", "pid"],
            update_fields=[
                "state", "failures", "successes", "failure_ratio", "rejected", "window_seconds", "changed_at",
                "blocked_until", "reported_at", "expires_at", "store",
            ],
        )  # fmt: skip
        # The heartbeat on the database's clock, the one the admin's view compares expires_at with:
        # hosts whose clocks differ from the database's by seconds still expire on time.
        if django_settings.USE_TZ:
            reports.filter(host=host, pid=pid).update(reported_at=Now(), expires_at=Now() + ttl)
        else:
            # Naive datetimes are local time (TIME_ZONE) to Django, SQLite's clock is UTC: reported_at,
            # which admin compares with timezone.now(), stays this process's; only expires_at, which
            # the view compares with the database's clock, is on that clock.
            reports.filter(host=host, pid=pid).update(expires_at=Now() + ttl)

    def _round(
        self,
        breakers: list[tuple[str, DefaultCircuitBreaker[str, Any]]],
        taken: list[tuple[str, CircuitTransition[Any]]],
    ) -> None:
        host, pid = socket.gethostname(), os.getpid()
        # Not read from the settings: before the overrides are read, that could wait for a module the
        # settings name, whose import waits for this read (see test_a_new_process_looking_a_client_up...).
        bound = ROUND_LOCK_WAIT
        unread: DatabaseError | None = None
        if breakers:
            try:
                with bounded(self._db(BreakerOverride), bound):
                    self._apply_overrides(breakers)
            except DatabaseError as error:
                # The overrides' table locked, or the database stalled: the reports below still go,
                # so that admin goes on listing this process (its rows expired after 5 s, and an
                # operator's action then found "no live process"); the round fails after them.
                unread = error
        self._overrides_read(self._number)  # builds waiting for them go on: the rest is for admin
        if _running_a_schema_command():
            # Overrides read, nothing written: a round's writes took SQLite's lock while migrate held
            # its own, and a data migration that called a client failed "database is locked" (CI, on
            # Django 4.2). The transitions wait for a round after the command (a server running
            # call_command("check") lost every one its other threads' breakers made meanwhile, a
            # review): a process Django's command line names as the command never publishes them,
            # one started otherwise (call_command, a renamed script) once the command is over.
            self._queue.extendleft(reversed(taken))
            self._trim()
            return
        now = timezone.now()
        ttl = datetime.timedelta(seconds=self.heartbeat_ttl)
        rows = []
        for name, breaker in breakers:
            for snap in breaker.snapshot():
                failures, successes, rejected, seconds = self._window((name, str(snap.scope)), snap)
                rows.append(
                    BreakerReport(
                        client=name,
                        endpoint=str(snap.scope),
                        host=host,
                        pid=pid,
                        state=str(snap.state),
                        failures=failures,
                        successes=successes,
                        failure_ratio=_ratio(failures, successes),
                        rejected=rejected,
                        window_seconds=seconds,
                        changed_at=self._changed_at((name, str(snap.scope)), snap.changed_at),
                        blocked_until=None if snap.blocked_until is None else _moment(snap.blocked_until),
                        reported_at=now,
                        expires_at=now + ttl,
                        store=store_name(breaker),
                    )
                )
        reports = BreakerReport.objects.using(self._db(BreakerReport))
        keys = {(row.client, row.endpoint) for row in rows}
        with bounded(self._db(BreakerReport), bound):
            if rows:
                # One transaction: between the two statements the rows' expires_at is this process's
                # local time, which with USE_TZ = False and a TIME_ZONE behind UTC looks hours past on
                # SQLite's clock (another process's view hid the live rows, its prune could delete them).
                with transaction.atomic(using=self._db(BreakerReport)):
                    self._upsert(reports, rows, host, pid, ttl)
            if self._first_round:  # rows a dead process with this pid left behind
                mine = reports.filter(host=host, pid=pid)
                self._delete(mine, set(mine.values_list("client", "endpoint")) - keys)
            else:
                self._delete(reports.filter(host=host, pid=pid), self._published - keys)
        for gone in set(self._history) - keys:
            del self._history[gone]
        self._published, self._first_round = keys, False
        # The transitions taken before the overrides were applied wait for the next round; their own are here now.
        taken += self._take_transitions()
        if taken:
            with bounded(self._db(BreakerTransition), bound):
                self._insert(taken, host, pid, now)
            taken.clear()
        self._prune_now_and_then(now, bound)
        if unread is not None:
            raise unread

    def _prune_now_and_then(self, now: datetime.datetime, bound: float) -> None:
        """Prune every PRUNE_EVERY seconds or so (processes spread out); a prune that fails (a lock)
        waits for its turn again, not for the next round, and is not the round's failure."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY * random.uniform(0.8, 1.2)
        try:
            with bounded(self._db(BreakerTransition), bound), bounded(self._db(BreakerReport), bound):
                self.prune(now)
        except DatabaseError as error:
            logger.warning(
                "circuit breaker history could not be pruned (%s: %s); tried again in about %d s",
                type(error).__name__,
                error,
                PRUNE_EVERY,
            )

    def _insert(
        self, taken: list[tuple[str, CircuitTransition[Any]]], host: str, pid: int, now: datetime.datetime
    ) -> None:
        BreakerTransition.objects.using(self._db(BreakerTransition)).bulk_create(
            BreakerTransition(
                at=_moment(t.at) or now,
                client=name,
                endpoint=str(t.scope),
                host=host,
                pid=pid,
                from_state=str(t.old),
                to_state=str(t.new),
                failures=t.failures,
                successes=t.successes,
                failure_ratio=_ratio(t.failures, t.successes),
            )
            for name, t in taken
        )

    def _window(self, key: Key, snap: CircuitSnapshot[Any]) -> tuple[int, int, int, float]:
        """(failures, successes, rejected, seconds covered) of the last ``COUNT_WINDOW`` seconds: the
        circuit's totals now minus those of the newest sample taken at least that long ago. A circuit
        seen for the first time counted from zero one round ago (it appeared since the last round)."""
        now = time.monotonic()
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = collections.deque([(now - min(self.interval, COUNT_WINDOW), 0, 0, 0)])
        history.append((now, snap.failures_total, snap.successes_total, snap.rejected_total))
        start = now - COUNT_WINDOW
        while len(history) > 1 and history[1][0] <= start:
            history.popleft()
        since, failures, successes, rejected = history[0]
        return (
            snap.failures_total - failures,
            snap.successes_total - successes,
            snap.rejected_total - rejected,
            round(min(COUNT_WINDOW, now - since), 1),
        )

    @staticmethod
    def _delete(rows: "Any", keys: Iterable[Key]) -> None:
        for client, endpoint in keys:
            rows.filter(client=client, endpoint=endpoint).delete()

    def _apply_overrides(self, breakers: list[tuple[str, DefaultCircuitBreaker[str, Any]]]) -> None:
        names = [name for name, _ in breakers]
        wanted: dict[str, dict[str, Override]] = collections.defaultdict(dict)
        # Before the read: a process whose reads failed while its reports went (admin listed it) takes
        # the next override it reads as one it saw come, with its transition (a third review).
        first_read, self._read_any = not self._read_any, True
        # Every client's rows, not only the watched ones': a client built later knows them (_known_overrides).
        rows = set(
            BreakerOverride.objects.using(self._db(BreakerOverride)).values_list(
                "client", "endpoint", "mode", "changed_at"
            )
        )
        known, self._known_overrides = self._known_overrides, rows
        watched = set(names)
        invalid = set()
        since: dict[Key, datetime.datetime | None] = {}  # None: an override the breakers saw come
        for client, endpoint, mode, changed_at in rows:
            if client not in watched:
                continue
            try:
                wanted[client][endpoint] = Override(mode)
                older = first_read or (client, endpoint, mode, changed_at) in known
                since[(client, endpoint)] = changed_at if older else None
            except ValueError:
                invalid.add((client, endpoint, mode))
        for client, endpoint, mode in sorted(invalid - self._invalid, key=repr):
            logger.warning(
                "circuit breaker override of client %r, endpoint %r has mode %r, which is neither %s: "
                "ignored (as if the row were absent) until it is changed in admin or deleted",
                client,
                endpoint,
                mode,
                " nor ".join(repr(str(override)) for override in Override),
            )
        self._invalid = invalid
        # A circuit a test's force_breaker() holds is the test's until its block ends: a round put the
        # database's mode over it, or lifted the database's mode the block had set again (a review).
        # Its bookkeeping is kept for the round after the block: what the database wants then is done.
        forced, held = _forced_by_tests(), set()
        for name, breaker in breakers:
            unread = breaker not in self._read_breakers
            self._read_breakers.add(breaker)
            want = wanted.get(name, {})
            snapshot = breaker.snapshot()
            have = {str(snap.scope): snap.override for snap in snapshot}
            changed = {str(snap.scope): snap.changed_at for snap in snapshot}
            for endpoint, mode in want.items():
                if (id(breaker), endpoint) in forced:
                    held.add((name, endpoint))
                    continue
                current = have.get(endpoint)
                earlier = self._applied.get((name, endpoint))
                before = earlier[1] if earlier is not None and current is earlier[0] else current
                if current != mode:
                    # Taken with no transition where the breaker came to life under it: see _known_overrides.
                    quietly = unread and not changed.get(endpoint)
                    self._set_override(breaker, (name, endpoint), mode, since[(name, endpoint)] if quietly else None)
                self._applied[(name, endpoint)] = (mode, before)
            for scope, applied in have.items():
                if (id(breaker), scope) in forced:
                    held.add((name, scope))
                    continue
                mine = None if scope in want else self._applied.pop((name, scope), None)
                if mine is not None and applied is mine[0]:  # still the one set from the database
                    breaker.set_override(scope, mine[1])
        for key in [key for key in self._applied if key[1] not in wanted.get(key[0], {}) and key not in held]:
            del self._applied[key]  # lifted, or its breaker is gone (a settings change rebuilt it)

    def _set_override(
        self, breaker: DefaultCircuitBreaker[str, Any], key: Key, mode: Override, since: datetime.datetime | None
    ) -> None:
        """Set an override from the database; with ``since`` (when it was set), one the breaker came to
        life under, and the change is written as no transition (see ``_known_overrides``)."""
        if since is None:
            breaker.set_override(key[1], mode)
            return
        self._quiet.on, self._quiet.at = True, None
        try:
            breaker.set_override(key[1], mode)
        finally:
            self._quiet.on = False
        if self._quiet.at is not None:
            self._forced_at_start[key] = (since, self._quiet.at)

    def _changed_at(self, key: Key, changed_at: float) -> datetime.datetime | None:
        """What a report says of when the circuit of ``key`` changed: when the override it took at its
        breaker's first read was set, while it has not changed since; else when it changed."""
        taken = self._forced_at_start.get(key)
        if taken is not None:
            if taken[1] == changed_at:
                return taken[0]
            del self._forced_at_start[key]
        return _moment(changed_at)

    def prune(self, now: datetime.datetime | None = None) -> None:
        """Delete transitions older than the history, and the expired reports of processes that stopped
        publishing (the admin's view ignores them from the moment they expire)."""
        now = now or timezone.now()
        BreakerTransition.objects.using(self._db(BreakerTransition)).filter(
            at__lt=now - datetime.timedelta(days=history_days())
        ).delete()
        BreakerReport.objects.using(self._db(BreakerReport)).filter(expires_at__lt=Now()).delete()


publisher = Publisher()


def _running_tests() -> bool:
    """Whether this process runs tests: Django's test environment is set up, or the process is a test
    run from its start, before that (Django's ``test`` command, pytest with pytest-django).

    From its start: a client built while Django starts (an ``AppConfig.ready()`` that warms clients
    up) ran its first round before the test environment was set up, in the real database: it applied
    an operator's override there to the tests' calls (a 502 where the test expected its own answer)
    and pruned the real database's expired reports (5 of 5 runs of ``manage.py test``, 2 of 2 of
    pytest-django)."""
    utils = sys.modules.get("django.test.utils")  # never imported outside tests: not imported here
    if utils is not None and hasattr(utils._TestState, "saved_data"):
        return True
    # Django runs the command argv[1] names (ManagementUtility.execute), by manage.py, django-admin or
    # python -m django; another program's argument "test" (python serve.py test, an environment's
    # name) is none: such a server stopped publishing. A command of that name subclasses Django's.
    return (
        "pytest_django" in sys.modules
        or "django.core.management.commands.test" in sys.modules
        or (sys.argv[1:2] == ["test"] and _is_django_s_command_line(sys.argv[0]))
    )


def _is_django_s_command_line(program: str) -> bool:
    path = program.replace("\\", "/")
    name = path.rsplit("/", 1)[-1]
    return name in ("manage.py", "django-admin", "django-admin.py") or path.endswith("django/__main__.py")


_MIGRATE = " (the app's tables are not there: has `manage.py migrate django_aio_request` run on that database?)"


def _in_memory(publisher: "Publisher") -> bool:
    """Whether a database the rounds use is SQLite in memory: there each connection has a database of
    its own, empty, and running migrate changes nothing (no hint to run it)."""
    try:
        return any(_sqlite_in_memory(alias) for alias, _ in publisher._where())
    except Exception:
        return False


def _missing_table(error: Exception) -> bool:
    """Whether ``error`` is a database's "no such table" (SQLite) or "relation ... does not exist" (PostgreSQL)."""
    text = str(error)
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def _forbidden_by_a_test(error: Exception) -> bool:
    """Whether ``error`` is Django's refusal of database access in a test that allows none."""
    testcases = sys.modules.get("django.test.testcases")  # never imported outside tests: not imported here
    forbidden = getattr(testcases, "DatabaseOperationForbidden", None)
    return forbidden is not None and isinstance(error, forbidden)


def _sqlite_in_memory(alias: str) -> bool:
    connection = connections[alias]
    return connection.vendor == "sqlite" and bool(getattr(connection, "is_in_memory_db", lambda: False)())


#: Each database's NAME as the settings gave it when the apps were ready, before a test run's setup
#: named its test database there instead (``remember_real_databases``).
_REAL_NAMES: dict[str, str] = {}


def remember_real_databases() -> None:
    """Note each database's NAME as the settings give it now (``AppConfig.ready``: before any test
    setup). A database still under that name while tests run is the real one, whatever its name:
    ``test_shop``, the test prefix's, was taken for a test database, and a test run's circuits and
    transitions were written into it (a review). Reads the settings only; connects to nothing."""
    try:
        for alias, conf in django_settings.DATABASES.items():
            _REAL_NAMES[alias] = str(conf.get("NAME") or "")
    except (AttributeError, TypeError):  # DATABASES malformed: Django reports it where it is used
        _REAL_NAMES.clear()


def _is_test_database(alias: str) -> bool:
    """Whether ``alias`` names a database Django's test setup made (and drops): its ``TEST NAME`` or
    a clone of it (``manage.py test --parallel``: ``<TEST NAME>_2``, or ``tests_2.sqlite3`` for a file),
    a name with the test prefix (clones and pytest-xdist's included), or SQLite in memory; never the
    database the settings named before the tests began (``remember_real_databases``)."""
    settings_dict = connections[alias].settings_dict
    name = str(settings_dict.get("NAME") or "")
    if name.startswith("file:memorydb_") or name == ":memory:":
        return True
    if name and _REAL_NAMES.get(alias) == name:
        return False
    test_name = (settings_dict.get("TEST") or {}).get("NAME")
    if test_name is not None:
        test_name = str(test_name)
        root, extension = os.path.splitext(test_name)
        clones = rf"{re.escape(test_name)}_[0-9]+|{re.escape(root)}_[0-9]+{re.escape(extension)}"
        if name == test_name or re.fullmatch(clones, name):
            return True
    return name.startswith(TEST_DATABASE_PREFIX)


# Held by the publisher's thread across a round's database work, and by a fork (os.fork(): gunicorn
# forking its workers) while it copies the process, at most FORK_WAIT: forked in the middle of a
# round, a child inherited the locks the database's client library held then, SQLite's process-wide
# one in its connect among them, and every SQLite connection the child opened, its own publisher's
# first, waited for ever (a test's forked worker, its master publishing every 0.2 s, hung in 5 runs
# of 6). Bounded: a round stuck on a hanging database does not hold a fork up for longer.
FORK_WAIT = 0.5
_ROUND_WORK = ForkWaits(FORK_WAIT)


def _after_fork() -> None:
    publisher.after_fork()


os.register_at_fork(after_in_child=_after_fork)

# Where threads may still be started (atexit's handlers run after that: Python 3.12 refuses new threads
# there), before the interpreter waits for its other threads, and before the registry closes the clients.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(publisher.publish_at_exit)


#: Django's commands that make or inspect the schema and static files: in a process running one, a
#: round that finds the app's tables missing says so at DEBUG only. A client looked up at import time
#: (a module ROOT_URLCONF imports, which the system checks before `migrate` import) warned from
#: `migrate` itself on a new database that the tables it was making were missing (a review). Such a
#: process takes overrides, so a data migration's calls obey an operator's forced-open circuit (they
#: did not when it skipped rounds altogether: a review of that first fix), and publishes nothing.
#: So does this app's ``circuit_breakers``: an operator's look at the breakers counted its own process
#: among those reporting them (a review).
SCHEMA_COMMANDS = frozenset(
    (
        "check",
        "circuit_breakers",
        "collectstatic",
        "createcachetable",
        "makemigrations",
        "migrate",
        "optimizemigration",
        "showmigrations",
        "sqlmigrate",
        "squashmigrations",
    )
)


# Where each schema command's module is, by the command's name (collectstatic is staticfiles').
_COMMAND_PACKAGES = {"collectstatic": "django.contrib.staticfiles", "circuit_breakers": "django_aio_request"}
_COMMAND_MODULES = {
    name: _COMMAND_PACKAGES.get(name, "django.core") + f".management.commands.{name}" for name in SCHEMA_COMMANDS
}


def _own_code(function: object) -> CodeType | None:
    """The code of ``function`` itself, inside its decorators: migrate's and makemigrations'
    ``handle()`` are Django's ``no_translations`` wrapper, whose code every command decorated with it
    shares (a review: a server command decorated so, in a process that had imported migrate, never
    published). Followed through ``functools.wraps``' ``__wrapped__``, or a closure's one function."""
    for _ in range(8):
        inner = getattr(function, "__wrapped__", None)
        if inner is None:
            cells = []
            for cell in getattr(function, "__closure__", None) or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    if isinstance(cell.cell_contents, FunctionType):
                        cells.append(cell.cell_contents)
            inner = cells[0] if len(cells) == 1 else None
        if inner is None:
            break
        function = inner
    code = getattr(function, "__code__", None)
    return code if isinstance(code, CodeType) else None


def _running_a_schema_command() -> bool:
    """Whether this process runs one of SCHEMA_COMMANDS: named on Django's command line, or its
    ``handle()`` on a thread's stack now, however the command was started.

    The command line tells only for manage.py, django-admin and python -m django: a migrate under a
    manage script of another name, a console entry point or ``call_command()`` in a deploy script
    published its data migration's breakers while it ran (a review). Django's pre_migrate and
    post_migrate signals were tried first: post_migrate is sent once for each app, and the first
    cleared the mark before the receivers of the others ran (they published), and a migrate that
    failed sent none, so the process and the workers a --preload master forked after it never
    published again (a review). Looked at once a round, off the calls' paths."""
    if sys.argv[1:2] != [] and sys.argv[1] in SCHEMA_COMMANDS and _is_django_s_command_line(sys.argv[0]):
        return True
    handles = set()
    for module_name in _COMMAND_MODULES.values():
        module = sys.modules.get(module_name)  # a command never imported is not running
        handle = _own_code(getattr(getattr(module, "Command", None), "handle", None))
        if handle is not None:
            handles.add(handle)
    if not handles:
        return False
    for top in sys._current_frames().values():
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code in handles:
                return True
            frame = frame.f_back
    return False


def client_built(sender: Any, *, name: str, client: Client, **kwargs: Any) -> None:
    """Receives ``signals.client_built`` (connected in ``AppConfig.ready``): watch the new client's breaker."""
    if client.circuit_breaker is not None:
        publisher.watch(name, client)

"""Circuit breaker state shared by every process and host through a cache (e.g. Django's Redis cache).

``AIO_REQUEST["CIRCUIT_BREAKER_STATE"] = "<cache alias>"`` gives each client's breaker a
:class:`CacheCircuitStore` (built in ``conf/building.py``, which hands it a function that opens the
Django cache: this module imports no Django and takes any object with Django's cache API). In the
cache, per (client, endpoint):

- ``...:<window>:f`` / ``...:<window>:s``: failures and successes in each window of the sampling
  period (windows aligned on wall-clock time, counted with ``cache.add`` + ``cache.incr``, expiring
  after the sampling period);
- ``...:open``: until when (``time.time()``) the circuit is blocked; absent when it is closed;
- ``...:probe:<until>``: the half-open probe claim, taken with ``cache.add`` (atomic), one per
  block that ended (the ``open`` value every process read), so one process of all probes, whatever
  each one's ``break_duration``.

No call ever waits for the cache: every round trip is made by a background thread, never under
the breaker's lock, so a cache that hangs (a blackholed Redis without socket timeouts) costs a call
nothing and holds no other thread. Outcomes are batched in memory; the thread flushes them every
``sync_interval`` (0.1 s), writes opens and closes, and reads back the counts and the open-until
of every endpoint in one ``get_many``, which callers then read from memory. The thread also tells
the breaker, so a circuit opened by other processes opens here without a call having to fail.

Two things a call used to ask the cache itself are now asked for it, at once (the thread is woken):
- the first call of a process to an endpoint wakes the thread, which reads the endpoint's block;
  until that read lands, every call to the endpoint (the first and any made meanwhile, from other
  threads too) goes by what is known (nothing: closed): a recycled worker learns of a circuit the
  others opened one round trip later, instead of making its calls wait for that round trip;
- the half-open probe: a call finding the break over gets the fallback and asks the thread to claim
  the probe (``cache.add``, atomic: one process of all); once claimed, the next call of this
  process is the probe, however late it comes (the claim is dropped only when the thread reads
  another block: a later claim of another process's, made once this one's block ended, or a close).
  So a circuit closes one call later than with a claim on the call path.

A round that has not finished after ``stall_after`` seconds (a hanging cache) counts as an outage
for decisions: probes are claimed locally, as when the cache fails.

If the cache fails, this process goes on counting and deciding on its own (a
:class:`MemoryCircuitStore` kept all along), logs one warning, and one more when the cache answers
again; nothing raises into a caller.

A value in the store's keys that the store does not write (another writer's, through the same
cache: a string, None, a list, NaN or an integer from 2**63 up, which Redis cannot add to, for a
count; anything but a finite number, or a time more than ``OPEN_AHEAD_LIMIT`` (about 31.7 years)
ahead and ``OPEN_AHEAD_BOUND`` (10) times ``break_duration`` + ``OPEN_KEY_GRACE``, for ``open``: a time
in milliseconds, say) counts as absent, with one warning naming
the key; a flush adding to such a count, or to one it would take past 2**63 - 1, replaces it. Before,
it raised out of the thread, which ended for good: counts were no longer shared and an open circuit
never probed again in that process (and an integer too large for Redis or for a float failed every
round, as an outage). A round that raises anyway (a bug) is logged and taken as an outage, and a
thread that ended is started again by the next call.
"""

import contextlib
import contextvars
import hashlib
import logging
import math
import os
import re
import secrets
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from django_aio_request.breaker.circuit_breaker import CircuitStore, MemoryCircuitStore
from django_aio_request.core.after_fork import ForkWaits
from django_aio_request.core.client_setup import error_text, holds_credentials, shown_endpoint, words_without_userinfo
from django_aio_request.core.event_loop import runs_event_loop

logger = logging.getLogger(__name__)

DEFAULT_SYNC_INTERVAL = 0.1
#: A sync round running longer than this (seconds, at least 10 intervals) means the cache hangs.
DEFAULT_STALL_AFTER = 1.0
# How long the "open until" key outlives its time: processes that were not told of a close in the
# meantime (none probed) then count as closed.
OPEN_KEY_GRACE = 60.0
# In a forked child, how long a missing key is taken for its parent's open not yet written: this many
# of the parent's rounds, and never less than _UNWRITTEN_LEAST seconds (a busy parent's round is late).
_UNWRITTEN_ROUNDS = 10
_UNWRITTEN_LEAST = 1.0

_Count = tuple[str, int, str]  # (scope, window number, "f" or "s")

_ABSENT = object()  # a cache.get default: tells a missing key from one holding None


# Redis keeps counts as signed 64-bit integers: INCR refuses a larger one, and one that would overflow.
MAX_COUNT = 2**63 - 1
# An ``open`` key further ahead than this many times (break_duration + OPEN_KEY_GRACE), and than
# OPEN_AHEAD_LIMIT, was not written by the store (it writes now + break_duration): another writer's,
# read as absent like any such value (a time in milliseconds, say). Not this process's break alone:
# a process with a shorter BREAK_DURATION (a rolling deploy lowering it from an hour to 30 s) read the
# others' open circuits so, and called the failing endpoint (a review).
OPEN_AHEAD_BOUND = 10
OPEN_AHEAD_LIMIT = 1_000_000_000.0  # s, about 31.7 years: above the longest BREAK_DURATION the settings take


def _count(value: Any) -> int | None:
    """``value`` read from a count key, or None when it is not a count the store writes (one Redis
    could not add to either: 2**64 failed every INCR, and so every round, as an outage)."""
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None  # type(): not bool


def _open_until(value: Any, latest: float) -> float | None:
    """``value`` read from an ``open`` key, or None when it is not a time the store writes: not a
    finite number, or one after ``latest`` (an int too large for a float raised OverflowError, a round
    failed on it as an outage, and a time centuries ahead blocked the circuit as long as the key lived)."""
    if type(value) not in (int, float):
        return None
    try:
        until = float(value)
    except OverflowError:
        return None
    return until if math.isfinite(until) and until <= latest else None


# Memcached refuses keys with spaces, control characters or non-ASCII, and keys over 250 bytes (with
# the cache's KEY_PREFIX and version); Django warns of them (CacheKeyWarning) on every backend.
MAX_NAMESPACE_IN_KEY = 64


def key_namespace(namespace: str) -> str:
    """``namespace`` (a client name) as it goes into keys: unchanged when it is made of ASCII letters,
    digits, ``_``, ``.``, ``-`` and ``~`` (keys stay readable, and the same as before for such names);
    else percent-escaped (``billing%20v2``), which no plain name can collide with; a long one is cut
    and ends with a hash of the whole name (``#`` + 16 hex digits: ``#`` is always escaped)."""
    escaped = urllib.parse.quote(namespace, safe="")
    if len(escaped) <= MAX_NAMESPACE_IN_KEY:
        return escaped
    digest = hashlib.sha1(namespace.encode(), usedforsecurity=False).hexdigest()[:16]
    cut = re.sub(r"%[0-9A-F]?$", "", escaped[: MAX_NAMESPACE_IN_KEY - 17])  # not within an escape
    return f"{cut}#{digest}"


def _urls(location: object) -> list[str]:
    """The text of a cache's ``LOCATION``: a URL, several in one string, or a list of them."""
    if isinstance(location, str):
        return [location]
    if isinstance(location, Sequence) and not isinstance(location, bytes | bytearray):
        return [one for one in location if isinstance(one, str)]  # any sequence, as Django's caches take
    return []


# How cache clients name a failure after which a write may or may not have been made (the request
# sent, its answer lost or late): redis-py's ConnectionError and TimeoutError (not Python's own),
# django-redis's ConnectionInterrupted. Python's OSError covers the rest (sockets, pymemcache).
_UNKNOWN_OUTCOME_NAMES = frozenset(("ConnectionError", "TimeoutError", "ConnectionInterrupted"))


def _outcome_unknown(error: BaseException) -> bool:
    """Whether ``error`` leaves it unknown if the cache made the write it was asked for: a timeout
    or a lost connection, rather than the cache's answer that it cannot (a missing key, a value
    that is not a count)."""
    return isinstance(error, OSError) or any(cls.__name__ in _UNKNOWN_OUTCOME_NAMES for cls in type(error).__mro__)


def _unmakeable(error: BaseException) -> bool:
    """Whether ``error`` says the cache cannot be made at all, whatever its server does: a backend or
    its client library that cannot be imported (an ``ImportError``, or Django's
    ``InvalidCacheBackendError``, told by name: this module imports no Django). Logged as an outage,
    "until it answers", a missing ``redis`` library read as a passing failure (a review). Not every
    ``ImproperlyConfigured``: a ``DatabaseCache`` with no database is none of E008's."""
    invalid_backend = any(cls.__name__ == "InvalidCacheBackendError" for cls in type(error).__mro__)
    return invalid_backend or isinstance(error, ImportError)


class CacheCircuitStore(CircuitStore[str]):
    """A :class:`CircuitStore` in a cache, keys prefixed by ``namespace`` (the client name, escaped
    where memcached would refuse it: :func:`key_namespace`).

    ``connect()`` returns the cache backend (an object with the Django cache API's ``add``,
    ``incr``, ``get_many``, ``set`` and ``delete_many``), once, on first use; ``alias`` names it in logs.
    ``disconnect(backend)``, when given, is called by :meth:`close` on the backend ``connect()``
    made, which is then the store's own: its connections are closed at once, not when the garbage
    collector frees the store (a named client rebuilt by each settings change held one more Redis
    connection each time: 21 to 221 over 100 rebuilds with the collector off).
    """

    def __init__(
        self,
        alias: str,
        *,
        connect: Callable[[], Any],
        namespace: str,
        disconnect: Callable[[Any], None] | None = None,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        stall_after: float = DEFAULT_STALL_AFTER,
        location: object = None,
    ) -> None:
        if not sync_interval > 0:
            raise ValueError(f"sync_interval must be > 0 seconds, not {sync_interval!r}")
        self.alias = alias
        # An error about a LOCATION holding a password may quote part of it: redis-py reads one with
        # a "/", "?" or "#" as the port ("Port could not be cast to integer value as 'Xk9f'"), or as
        # a host and port it fails to reach ("connecting to adm1n:2024"; a review).
        self._locations = _urls(location)
        self._connect = connect
        self._disconnect = disconnect
        self.namespace = namespace
        # As logs name it: a URL pasted as a client's name is shown without its credentials (a review).
        self._name = shown_endpoint(namespace)
        self.key_namespace = key_namespace(namespace)
        self.sync_interval = sync_interval
        self.stall_after = max(stall_after, 10 * sync_interval)
        self._local: MemoryCircuitStore[str] = MemoryCircuitStore(clock=time.time)
        self._on_change: Callable[[str], None] = lambda scope: None
        self._sampling_duration = 10.0
        self._windows_count = 10
        self._window = 1.0
        self._break_duration = 5.0
        self._cache: Any = None
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one sync at a time (the thread's, close()'s, a test's)
        self._scopes: dict[str, str] = {}  # scope -> its key prefix
        self._until: dict[str, float | None] = {}  # the shared "open until" as last known here
        # scope -> the "open until" its first read here found (a circuit already open elsewhere when
        # this process started): see open_before_first_read. Scopes read are in _until.
        self._at_first_read: dict[str, float] = {}
        self._shared: dict[str, dict[tuple[int, str], int]] = {}  # scope -> (window, kind) -> count read
        self._pending: dict[_Count, int] = {}  # counted here, not flushed yet
        self._flushing: dict[_Count, int] = {}  # being flushed: still counted until the read lands
        self._writes: dict[str, float | None] = {}  # scope -> open until to write, None: closed
        # In a forked child: the opens its parent decided and had not yet written, and until when a
        # missing key is taken for "not written yet" rather than "closed elsewhere" (_after_fork_in_child).
        self._unwritten_opens: dict[str, float] = {}
        self._unwritten_until: float | None = 0.0  # None: from the child's first round that reads
        self._writing: dict[str, float | None] = {}  # the writes of the round under way, until it ends
        self._released: set[str] = set()  # probe keys to delete (their probe ended without an outcome)
        self._wanted: set[str] = set()  # scopes whose probe a call asked the thread to claim
        # scope -> (claimed probe key, claimed at, the "open until" written with the claim): held until
        # this process's next call (the probe), however late, unless the thread reads another block.
        self._granted: dict[str, tuple[str, float, float]] = {}
        self._probes: dict[str, str] = {}  # scope -> probe key of the probe out now (to release it)
        # scope -> how many times it was closed here: what a round read before a close is stale.
        self._closes: dict[str, int] = {}
        self._round_started: float | None = None  # time.monotonic() of the sync round running, if any
        # A sync thread close() told to stop and could not wait for (on an event loop): it closes the
        # connections after its last round, and a later close() waits for it rather than close them under it.
        self._stopping: threading.Thread | None = None
        self._rounds = 0  # rounds ended (read, or failed): what wait_for_read waits for
        self._rounds_done = threading.Condition(threading.Lock())
        self._stall_logged = False
        # Who claims a probe (_claim), with the process's id: another store's in this process, a
        # process on another host with the same id, a forked child (another id) are someone else.
        self._claimant = secrets.token_hex(8)
        self._malformed: set[str] = set()  # keys the last round found holding a value not the store's
        self.healthy = True  # False during a cache outage: decisions are this process's own
        self._pid = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        _STORES.add(self)

    # -- CircuitStore, called under the breaker's lock -------------------------------------------

    def bind(
        self,
        *,
        sampling_duration: float,
        windows_count: int,
        break_duration: float,
        on_change: Callable[[str], None],
    ) -> None:
        self._local.bind(
            sampling_duration=sampling_duration,
            windows_count=windows_count,
            break_duration=break_duration,
            on_change=on_change,
        )
        self._sampling_duration = sampling_duration
        self._windows_count = windows_count
        self._window = sampling_duration / windows_count
        self._break_duration = break_duration
        self._on_change = on_change

    def now(self) -> float:
        return time.time()

    def add(self, scope: str, success: bool) -> None:
        self._local.add(scope, success)
        self._known(scope)
        if self.healthy:
            window = int(time.time() / self._window)
            key = (scope, window, "s" if success else "f")
            with self._lock:
                count = self._pending.get(key)
                if count is None and len(self._pending) > 2 * self._windows_count:
                    # Not flushed for a while (the cache hangs): drop counts out of the sampling period.
                    first = window - self._windows_count + 1
                    for stale in [stale for stale in self._pending if stale[1] < first]:
                        del self._pending[stale]
                self._pending[key] = (count or 0) + 1

    def totals(self, scope: str) -> tuple[int, int]:
        if not self.healthy:
            return self._local.totals(scope)
        current = int(time.time() / self._window)
        first = current - self._windows_count + 1
        counts = {"f": 0, "s": 0}
        with self._lock:
            for (window, kind), count in self._shared.get(scope, {}).items():
                if window >= first:
                    counts[kind] += count
            for source in (self._flushing, self._pending):
                for (counted_scope, window, kind), count in source.items():
                    if counted_scope == scope and window >= first:
                        counts[kind] += count
        return counts["f"], counts["s"]

    def blocked_until(self, scope: str) -> float | None:
        if scope not in self._scopes:
            self._known(scope)
            self._wake.set()  # read its block now, not at the next interval
        elif self._thread is None and self._pid != os.getpid():
            # Known scopes but no thread in a forked child (gunicorn --preload: threads do not survive
            # fork()). Without it, a circuit open at the fork was never learnt closed, nor probed:
            # claim_probe asked a thread that did not exist. (A store closed here starts again on
            # use, by claim_probe or an outcome, not on a look such as a snapshot.)
            self._start()
            self._wake.set()
        if not self.healthy:
            return self._local.blocked_until(scope)
        return self._until.get(scope)

    def open_before_first_read(self, scope: str) -> bool:
        until = self._until.get(scope)
        return until is not None and self._at_first_read.get(scope) == until

    def block(self, scope: str, until: float) -> None:
        self._local.block(scope, until)
        self._known(scope)
        with self._lock:
            self._probes.pop(scope, None)
            self._granted.pop(scope, None)
            self._until[scope] = until
            # Written when the cache answers, in an outage too: a circuit this process opened while
            # it could not tell the others was read back as closed the moment the cache answered.
            self._writes[scope] = until

    def claim_probe(self, scope: str, until: float) -> bool:
        self._known(scope)  # the thread claims it: it must run (in a forked child, or after close())
        if self.healthy and not self._stalled():
            now = time.time()
            with self._lock:
                granted = self._granted.pop(scope, None)
                if granted is not None:
                    self._probes[scope] = granted[0]
                    self._until[scope] = until
                    self._writes[scope] = until
                else:
                    granted = None
                    self._wanted.add(scope)
                    self._until[scope] = now + self.sync_interval  # ask again once the thread had its go
            if granted is None:
                self._wake.set()
                return False
            self._local.block(scope, until)
            return True
        return self._local.claim_probe(scope, until)

    def release_probe(self, scope: str) -> None:
        """The probe of ``scope`` ended without an outcome (abandoned, or it raised): let the next
        call (here or in another process) probe at once."""
        self._local.block(scope, time.time())
        with self._lock:
            self._until[scope] = time.time()
            probe = self._probes.pop(scope, None)
            if self.healthy:
                self._writes[scope] = time.time()
                if probe is not None:
                    self._released.add(probe)

    def close_circuit(self, scope: str) -> None:
        self._local.close_circuit(scope)
        with self._lock:
            self._probes.pop(scope, None)
            self._granted.pop(scope, None)
            self._until[scope] = None
            self._shared.pop(scope, None)
            for source in (self._pending, self._flushing):
                for key in [key for key in source if key[0] == scope]:
                    del source[key]
            self._writes[scope] = None  # in an outage too: the others learn of it once the cache answers
            # A round under way read the counts and the block from before this close (they are deleted
            # by the next round): taken, they tripped the circuit again on the failures that opened it.
            self._closes[scope] = self._closes.get(scope, 0) + 1

    def close(self) -> None:
        """Stop the sync thread after a last flush, made by the thread itself and waited for at most
        ``stall_after`` seconds: a cache that hangs cannot hold the caller (it starts again if the
        store is used). Inside :func:`closing_together`, at most until that block's shared end. On a
        thread that runs an event loop, not waited for at all: a settings change in async code closes
        the clients there, and waiting froze the loop, and the deadlines of the calls in flight on it,
        for ``stall_after`` (a 0.3 s call answered at 1.05 s)."""
        began = time.monotonic()
        with self._lock:  # the thread and its events as _start() published them, together
            thread, stop, wake = self._thread, self._stop, self._wake
            if thread is None and self._stopping is not None and self._stopping.is_alive():
                # An earlier close() could not wait for it (on an event loop), and its last round may be
                # under way: waited for here as any, not closed under (a second close, the one at exit).
                thread = self._stopping
        waited = False
        if thread is not None and self._pid == os.getpid():
            stop.set()
            wake.set()
            if thread is not threading.current_thread() and not runs_event_loop():
                together = _close_by.get()
                thread.join(self.stall_after if together is None else max(0.0, together[1] - time.monotonic()))
                waited = True
                if thread.is_alive():
                    # Its connections are closed below, under the round (which then fails, said at
                    # debug: _outage). Said here instead, in the words of what happened.
                    _abandoned.add(thread)
                    logger.warning(
                        "circuit breaker state: cache %r did not answer the last round of %r within %.2f s of"
                        " closing: what was counted here since its last round that answered is not shared",
                        self.alias,
                        self._name,
                        time.monotonic() - (began if together is None else together[0]),
                    )
        with self._lock:
            if self._thread is thread:  # not one a call started meanwhile (it finds an ended thread dead)
                self._thread = None
            if thread is not None and not waited and thread is not threading.current_thread() and thread.is_alive():
                # Not waited for (on an event loop): its last round may be under way. Closed under it,
                # the round failed ("Bad file descriptor", its counts lost) or connected anew and left
                # the new connections open; the thread closes them itself once the round is over (_run).
                self._stopping = thread
                return
        self._close_connections()

    def _close_connections(self) -> None:
        if self._disconnect is not None and self._pid == os.getpid():
            with _CONNECTING:
                cache, self._cache = self._cache, None  # used again, the store connects anew
            if cache is not None:
                try:
                    self._disconnect(cache)
                except Exception:  # best effort: the connections go with the backend anyway
                    logger.debug("closing cache %r's connections failed", self.alias, exc_info=True)

    def _unwritten(self) -> bool:
        """Whether something counted or decided here waits for a round to write it."""
        with self._lock:
            return bool(self._pending or self._writes or self._released)

    def _after_last_round(self) -> None:
        """(On the sync thread, told to stop, its last round over.) Close the cache's connections,
        unless a call has started a new thread meanwhile, which uses them."""
        with self._lock:
            if self._stopping is threading.current_thread():
                self._stopping = None
            if self._thread is not None and self._thread is not threading.current_thread():
                return
        self._close_connections()

    # -- the sync thread ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Flush the outcomes counted here, write opens and closes, claim the probes calls asked
        for, read everything back (one step of the background thread; tests call it to flush at
        once). Never raises: the thread that calls it must go on, or nothing would be shared or
        probed again in this process."""
        with self._sync_lock:
            self._round_started = time.monotonic()
            try:
                self._sync()
            except Exception as error:  # not the cache's (_sync handles those): a bug
                with self._lock:
                    self._flushing.clear()
                self._outage(error, crashed=True)
            finally:
                self._round_started = None
                with self._rounds_done:
                    self._rounds += 1
                    self._rounds_done.notify_all()
                # Builds wait again once a round has read; not after one that failed: a cache that
                # hangs past its socket timeout fails a round a second, and each cleared the mark, so
                # every build spread over time waited again (5 builds 1.5 s apart: 0.25 s each).
                if self.healthy:
                    _late_aliases.discard(self.alias)
                else:
                    _late_aliases.add(self.alias)

    def read_now(self, scope: str) -> int:
        """Have the thread read ``scope`` now; the number of rounds whose end means it was read (for
        :meth:`wait_for_read`).

        For a client's build (breaker_publisher.Publisher.watch): until this process's first read
        of an endpoint lands, its calls go by what it knows, and in a fresh process that read
        imports the cache's client library and connects (80-110 ms with Django's RedisCache): a
        single-threaded worker recycled during a break sent calls to the open circuit until its own
        failures tripped it (up to MINIMUM_THROUGHPUT each, 83-107 calls from 3 workers in 6 s)."""
        self._known(scope)
        with self._rounds_done:
            # A round under way may have listed its scopes before this one: the next one reads it.
            target = self._rounds + (1 if self._round_started is None else 2)
        self._wake.set()
        return target

    def wait_for_read(self, target: int, timeout: float) -> bool:
        """Wait until ``target`` rounds have ended (:meth:`read_now`), at most ``timeout`` seconds; none
        while the last round of a store of the same cache failed, or a wait for one ran out, and no
        round of it has read since (a cache that hangs or fails holds one build, not each). Whether
        they had.

        A ``timeout`` of 0 or less (the overrides' wait took the build's time: the database hangs too)
        is a wait that ran out unless the read has landed: returned at once as False, it held the
        next build for the whole wait again, and the first build did not name the cache (a review)."""
        if self.alias in _late_aliases:
            return False
        with self._rounds_done:
            if self._rounds_done.wait_for(lambda: self._rounds >= target, max(timeout, 0.0)):
                return True
        _late_aliases.add(self.alias)
        # Said, as for the overrides' database (breaker_publisher.py): a worker recycled during a
        # break then calls the open circuit until its first read lands or its own failures trip it
        # (a review: 14 of 29 recycled workers' waits ran out on a loaded machine, unlogged).
        logger.warning(
            "circuit breaker state: cache %r did not answer this process's first read in the %.2f s left"
            " of the client build's wait (a cache, or a process starting up, that slow);"
            " client %r calls by what this process knows until it does (a circuit other processes"
            " opened is not known here yet)",
            self.alias,
            max(timeout, 0.0),  # none left: the overrides' database took the wait
            self._name,
        )
        return False

    @property
    def deciding_alone(self) -> bool:
        """Whether this process decides on its own now: the cache failed (``healthy`` is False), or a
        round has waited ``stall_after`` for it. A cache that hangs never fails, so ``healthy`` alone
        stayed True for as long as it hung, and admin said "shared in cache" while the log said this
        process decided alone (a review)."""
        return not self.healthy or self._stalled()

    def _stalled(self) -> bool:
        started = self._round_started
        if started is None or time.monotonic() - started < self.stall_after:
            return False
        if not self._stall_logged:
            self._stall_logged = True
            logger.warning(
                "circuit breaker state: cache %r has not answered for %.1f s; %r decides in this process",
                self.alias,
                time.monotonic() - started,
                self._name,
            )
        return True

    def _claim(
        self, cache: Any, wanted: set[str], scopes: dict[str, str], found: dict[str, float]
    ) -> dict[str, tuple[str, float, float]]:
        """Claim the probes calls asked for: one process of all gets each (``cache.add`` is atomic).

        Only where the block just read says the break is over: a circuit another process closed
        meanwhile (its ``open`` key deleted) or opened again must not be blocked by a late claim.
        """
        won: dict[str, tuple[str, float, float]] = {}
        for scope in wanted:
            until = found.get(f"{scopes[scope]}:open")
            now = time.time()
            if until is None or until > now:
                continue
            # Keyed by the block that ended, which every process read alike: by the slot of this
            # process's own break (now / break_duration), processes with different breaks (a
            # rolling deploy changing it) claimed different keys, and both probed (a review).
            key = f"{scopes[scope]}:probe:{until!r}"
            claimant = f"{os.getpid()}:{self._claimant}"
            # Or claimed in an earlier round whose answer was lost (a cache that stalled past its
            # socket timeout as it wrote the claim): no process knew it held the claim, every add
            # failed on it, and none probed until the key expired, two breaks later (a review).
            if cache.add(key, claimant, self._seconds(2)) or cache.get(key) == claimant:
                blocked = now + self._break_duration
                won[scope] = (key, now, blocked)
                # Others see the block at once, and stop trying to claim.
                ttl = self._seconds_for(self._break_duration + OPEN_KEY_GRACE)
                cache.set(f"{scopes[scope]}:open", blocked, ttl)
        return won

    def _sync(self) -> None:
        with self._lock:
            scopes = dict(self._scopes)
            wanted, self._wanted = self._wanted, set()
            released, self._released = self._released, set()
            # Held in _writing before it leaves _writes: a fork from another thread between the two
            # (the lock does not hold a fork back) found them in neither (a review).
            writes = self._writing = self._writes
            self._writes = {}
            pending, self._pending = self._pending, {}
            for key, count in pending.items():
                self._flushing[key] = self._flushing.get(key, 0) + count
            flushing = dict(self._flushing)
            closes = dict(self._closes)
        if not scopes:
            return
        current = int(time.time() / self._window)
        windows = range(current - self._windows_count + 1, current + 1)
        try:
            cache = self._backend()
            self._write(cache, writes, scopes, windows, released)
            malformed = self._flush(cache, flushing, scopes)
            names = [f"{prefix}:{w}:{kind}" for prefix in scopes.values() for w in windows for kind in "fs"]
            found = self._parse(cache.get_many([*names, *(f"{prefix}:open" for prefix in scopes.values())]), malformed)
            won = self._claim(cache, wanted, scopes, found)
        except Exception as error:
            self._round_failed(error, writes)
            return
        with self._lock:
            self._writing = {}
            self._read_once()
            for key, count in flushing.items():  # these outcomes are in the counts just read
                left = self._flushing.get(key, 0) - count
                if left > 0:
                    self._flushing[key] = left
                else:
                    self._flushing.pop(key, None)
            for scope, prefix in scopes.items():
                if self._closes.get(scope) == closes.get(scope):  # else read before a close made here since
                    self._take(scope, prefix, found, windows, won.get(scope))
            # After a failure, or a hang the log named (_stalled): a cache that hung and came back
            # without failing a round was said to stall and never to answer again.
            recovered = not self.healthy or self._stall_logged
            self.healthy = True
            self._stall_logged = False
            new = sorted(set(malformed) - self._malformed)
            self._malformed = set(malformed)
        if new:
            logger.warning(
                "circuit breaker state: cache %r has a value the store does not write (another writer's?) in "
                "key%s %s; %r counts it as absent",
                self.alias,
                "s" if len(new) > 1 else "",
                ", ".join(map(repr, new[:3])) + (f" and {len(new) - 3} more" if len(new) > 3 else ""),
                self._name,
            )
        if recovered:
            logger.warning(
                "circuit breaker state: cache %r answers again; %r shares its counts again", self.alias, self._name
            )
        for scope in scopes:
            try:
                self._on_change(scope)
            except Exception:
                logger.exception("circuit breaker state: updating the breaker of %r failed", self._name)

    # -- internals -------------------------------------------------------------------------------

    def _parse(self, raw: dict[str, Any], malformed: list[str]) -> dict[str, float]:
        """The counts and blocks ``get_many`` read, without the values the store does not write (another
        writer's, through the same cache), whose keys go to ``malformed``: they count as absent."""
        found: dict[str, float] = {}
        latest = time.time() + max(OPEN_AHEAD_LIMIT, OPEN_AHEAD_BOUND * (self._break_duration + OPEN_KEY_GRACE))
        for key, value in raw.items():
            parsed = _open_until(value, latest) if key.endswith(":open") else _count(value)
            if parsed is None:
                malformed.append(key)
            else:
                found[key] = parsed
        return found

    def _take(
        self, scope: str, prefix: str, found: dict[str, float], windows: range, won: tuple[str, float, float] | None
    ) -> None:
        """Take what a round read of ``scope`` (and the probe it won), under the lock."""
        self._shared[scope] = {
            (w, kind): int(found[f"{prefix}:{w}:{kind}"])
            for w in windows
            for kind in "fs"
            if f"{prefix}:{w}:{kind}" in found
        }
        if won is not None:
            self._granted[scope] = won
            self._until[scope] = won[1]  # the break is over for this process's next call only
            return
        until = found.get(f"{prefix}:open")
        held = self._granted.get(scope)
        if held is not None and (until is None or until != held[2]):
            # Another process claimed a later probe (this one's next call came after the claim's
            # block ended), or the circuit was closed or opened again: the claim is not ours any more.
            del self._granted[scope]
            held = None
        # Not when a newer local decision waits to be written, nor over a probe claimed here (the
        # block read back is the one written for it).
        if scope not in self._writes and held is None and not self._not_written_yet(scope, until):
            self._learn_block(scope, until)

    def _read_once(self) -> None:
        """(Holding the lock, a round having read the cache.) In a forked child's first such round, the
        time during which a missing key is its parent's open not yet written starts (_not_written_yet)."""
        if self._unwritten_until is None:
            self._unwritten_until = time.monotonic() + max(_UNWRITTEN_ROUNDS * self.sync_interval, _UNWRITTEN_LEAST)

    def _not_written_yet(self, scope: str, until: float | None) -> bool:
        """(Holding the lock.) Whether a missing key is, in a forked child, its parent's open not yet
        written (see :meth:`_after_fork_in_child`), not a circuit closed elsewhere: while the parent's
        round may still write it, and while its block lasts."""
        unwritten = self._unwritten_opens.get(scope)
        if unwritten is None:
            return False
        held = (
            until is None
            and self._unwritten_until is not None
            and time.monotonic() < self._unwritten_until
            and time.time() < unwritten
        )
        if not held:  # the key is there (it says what it says), or the time is over: as any process from now on
            del self._unwritten_opens[scope]
        return held

    def _round_failed(self, error: BaseException, writes: dict[str, float | None]) -> None:
        with self._lock:
            self._flushing.clear()
            for scope, until in writes.items():  # not written: once the cache answers, unless newer
                self._writes.setdefault(scope, until)
            self._writing = {}  # after: a fork meanwhile finds them in one or the other
        self._outage(error)

    def _learn_block(self, scope: str, learned: float | None) -> None:
        """Take the block read from the cache (under the lock). It goes to the local store too, which
        decides during an outage: a process that had learned of a circuit opened elsewhere called
        through it the moment the cache failed."""
        if scope not in self._until and learned is not None:
            self._at_first_read[scope] = learned
        known = self._until.get(scope)
        self._until[scope] = learned
        if learned is not None and learned != known:
            self._local.block(scope, learned)
        elif learned is None and known is not None:
            self._local.close_circuit(scope)

    def _known(self, scope: str) -> None:
        """Make sure the sync thread runs (in this process) and syncs ``scope``."""
        thread = self._thread
        if thread is None or not thread.is_alive():  # not started, or ended (it must not, but then: again)
            self._start()
        if scope not in self._scopes:
            with self._lock:
                self._scopes[scope] = self._prefix(scope)

    def _write(
        self, cache: Any, writes: dict[str, float | None], scopes: dict[str, str], windows: range, released: set[str]
    ) -> None:
        if released:  # probes that ended without an outcome: others may claim at once
            cache.delete_many(list(released))
        for scope, until in writes.items():
            prefix = scopes[scope]
            if until is None:  # closed: forget the block and the counts that opened it
                stale = [f"{prefix}:{w}:{kind}" for w in range(windows[0] - 1, windows[-1] + 1) for kind in "fs"]
                cache.delete_many([f"{prefix}:open", *stale])
            else:
                cache.set(f"{prefix}:open", until, self._seconds_for(until - time.time() + OPEN_KEY_GRACE))

    def _flush(self, cache: Any, flushing: dict[_Count, int], scopes: dict[str, str]) -> list[str]:
        """Add the outcomes counted here to the shared counts; returns the keys whose value was not a
        count (another writer's), which are replaced by this process's count."""
        timeout = self._seconds_for(self._sampling_duration + self._window)
        malformed = []
        for (scope, window, kind), count in flushing.items():
            key = f"{scopes[scope]}:{window}:{kind}"
            if cache.add(key, count, timeout):
                continue
            try:
                total = cache.incr(key, count)
                if type(total) is int and total < count:
                    # It held a negative number, which Redis adds to: read as absent, it swallowed every
                    # outcome flushed to it until it climbed back to 0. Replaced, as below.
                    cache.set(key, count, timeout)
                    malformed.append(key)
            except Exception as error:  # Django's ValueError when missing, else the cache's own (Redis: ResponseError)
                if _outcome_unknown(error):
                    # The cache may have added it and its answer be what was lost: read back and
                    # added again, one passing stall counted a batch twice in every process's view.
                    raise
                value = cache.get(key, _ABSENT)  # raises in turn when the cache failed
                if value is _ABSENT:  # expired between the two calls
                    cache.add(key, count, timeout)
                elif _count(value) is None or value + count > MAX_COUNT:  # incr cannot add to it: absent
                    cache.set(key, count, timeout)
                    malformed.append(key)
                else:  # added by another process since it expired, or a passing failure: once more
                    cache.incr(key, count)
        return malformed

    def _outage(self, error: BaseException, *, crashed: bool = False) -> None:
        with self._lock:
            started = self.healthy
            self.healthy = False
            self._pending.clear()
            # self._writes is kept: opens and closes decided in the outage are written once the cache
            # answers (cleared here, a circuit opened in an outage of more than one round was lost).
            self._wanted.clear()
            self._granted.clear()
        if threading.current_thread() in _abandoned:
            # close() stopped waiting for this round, said so, and closed its connections under it:
            # what the round then raised ("Bad file descriptor") is of that close, not of the cache.
            logger.debug("circuit breaker state: the round close() stopped waiting for ended: %s", self._said(error))
        elif started and crashed:
            logger.error(
                "circuit breaker state: a sync round with cache %r raised (%s); %r counts in this process "
                "only until a round succeeds",
                self.alias,
                self._said(error),
                self._name,
                exc_info=None if self._withholds(error) else error,
            )
        elif started and _unmakeable(error):
            logger.error(
                "circuit breaker state: cache %r cannot be made (%s): a settings error, which `manage.py check"
                " --tag django_aio_request` reports as django_aio_request.E008, not an outage; %r counts in this"
                " process only until the settings are fixed",
                self.alias,
                self._said(error),
                self._name,
            )
        # A bug's round (crashed) and a settings error are said as above, also on the way out.
        elif started and (stop := getattr(_sync_thread, "stop", None)) is not None and stop.is_set():
            logger.warning(
                "circuit breaker state: the last round of %r before closing failed, cache %r (%s): what was"
                " counted here since its last round that answered is not shared",
                self._name,
                self.alias,
                self._said(error),
            )
        elif started:
            logger.warning(
                "circuit breaker state: cache %r failed (%s); %r counts in this process only until it answers",
                self.alias,
                self._said(error),
                self._name,
            )

    def _withholds(self, error: BaseException) -> bool:
        """Whether the log changes the words of ``error`` (:meth:`_said`): then its traceback, which
        repeats them, is left out too."""
        return self._said(error) != f"{type(error).__name__}: {error_text(error)}"

    def _said(self, error: BaseException) -> str:
        """``error`` as the log names it: its type and words, each part of the credentials in the
        cache's LOCATION in them put as ``***``; its type alone when a part is too short to tell, and
        for a URL parser's error (a ValueError) about a LOCATION with credentials, which quotes them
        in ways no part can be looked for in (repr's escapes, an address between "[" and "]")."""
        parser = isinstance(error, ValueError) and any(holds_credentials(url) for url in self._locations)
        words = None if parser else words_without_userinfo(error_text(error), self._locations)
        if words is None:
            return f"{type(error).__name__}; its words are left out, as they may quote the password in its LOCATION"
        return f"{type(error).__name__}: {words}"

    def _backend(self) -> Any:
        """One cache backend object for the store (thread-safe for Redis: one connection pool)."""
        if self._cache is None:
            with _CONNECTING:  # a fork() waits for it: see _CONNECTING
                cache = self._connect()
                _make_client(cache)
                self._cache = cache
        return self._cache

    def _prefix(self, scope: str) -> str:
        digest = hashlib.sha1(scope.encode(), usedforsecurity=False).hexdigest()[:16]
        return f"aio_request:cb:{self.key_namespace}:{digest}"

    def _seconds(self, breaks: float) -> int:
        return self._seconds_for(breaks * self._break_duration)

    @staticmethod
    def _seconds_for(seconds: float) -> int:
        return max(1, math.ceil(seconds))  # Django's cache timeouts are whole seconds

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork(), and locks may have been held by one that did not: start anew.
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._rounds_done = threading.Condition(threading.Lock())
        self._cache = None  # the child opens its own connections
        self._thread = self._stopping = None
        self._round_started = None
        # What the parent counted or decided is the parent's to write: a child writing it again would
        # count every outcome twice (or once per child), and a block written late overwrote what other
        # processes decided since (a probe's close: a review). But an open the parent had not yet
        # written, read as a missing key, made the child take the circuit for closed elsewhere, and a
        # call went through it at once (a review: 4 of 4 gunicorn --preload starts). So for a few of
        # the parent's rounds a missing key does not close what the parent opened (_not_written_yet).
        # Not a probe's block: the probe's claim holds the key, and its close, once written, is real.
        # The parent's round under way may not have written its writes yet either (a review: 27 calls
        # a circuit through 5 opened at once on a slow cache); and what the parent had itself inherited
        # so counts still (a worker that forks in turn). The time starts at the child's first round
        # that reads the cache: started at the fork, it ran out in an outage (a review: 3 of 6 children
        # called through once the cache came back, the parent's write landing after their read).
        now = time.time()
        started = self._unwritten_until
        still = started is None or time.monotonic() < started
        self._unwritten_opens = {
            **{scope: until for scope, until in self._unwritten_opens.items() if still and until > now},
            **{
                scope: until
                for scope, until in {**self._writing, **self._writes}.items()
                if until is not None and until > now and scope not in self._probes
            },
        }
        self._unwritten_until = None
        self._pending = {}
        self._flushing = {}
        self._writes = {}
        self._writing = {}
        self._wanted = set()
        self._granted = {}
        self._probes = {}
        self._released = set()

    def _start(self) -> None:
        if getattr(_sync_thread, "store", None) is self:
            return  # the thread of a store being closed, telling the breaker of its last round: no new one
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            stop, wake = threading.Event(), threading.Event()
            thread = threading.Thread(
                target=_run, args=(weakref.ref(self), stop, wake, self.sync_interval), daemon=True
            )
            thread.name = f"aio-request-breaker-{self._name}"
            thread.start()
            # Published started, with its events, in one step under the lock: close() read a thread a
            # call had just made and not yet started, and join() raised RuntimeError out of
            # clients.close_all() and override_settings (about 2% of settings changes while 8 threads
            # called: tests/breaker/test_cache_store.py::test_closing_while_calls_restart_the_thread_never_raises).
            self._stop, self._wake, self._thread = stop, wake, thread


_STORES: "weakref.WeakSet[CacheCircuitStore]" = weakref.WeakSet()
# Cache aliases whose last round failed, or a wait_for_read ran out on: builds do not wait for them
# until a round of a store of theirs has read.
_late_aliases: set[str] = set()

# (when the closing began, its shared end), time.monotonic(): see closing_together().
_close_by: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "aio_request_close_by", default=None
)


@contextlib.contextmanager
def closing_together(stores: Iterable[object]) -> Iterator[None]:
    """Close several stores in one wait: ``close()`` calls inside the block wait for their threads'
    last flush only until a shared end, the longest ``stall_after`` of ``stores`` from now.

    Each store's thread is told to stop first, so the last flushes run at the same time. Without
    this, closing N clients whose cache hangs (blackholed, no socket timeouts) waited ``stall_after``
    for each in turn: N seconds at every process exit (``clients.close_all()`` runs at exit, and a
    gunicorn worker past its graceful timeout is killed) and at every settings change.
    Objects that are not :class:`CacheCircuitStore` are left alone.
    """
    shared = [store for store in stores if isinstance(store, CacheCircuitStore)]
    for store in shared:
        if store._thread is not None and store._pid == os.getpid():
            store._stop.set()
            store._wake.set()
    now = time.monotonic()
    token = _close_by.set((now, now + max((store.stall_after for store in shared), default=0.0)))
    try:
        yield
    finally:
        _close_by.reset(token)


def stopping_stores() -> list[CacheCircuitStore]:
    """The stores whose sync thread a ``close()`` on an event loop told to stop and could not wait for,
    and which is still making its last round: the process's exit must wait for them (with
    :func:`closing_together`), or it ends them in the middle of that round, their counts lost without
    a word (a review: 12-13 of 18 failures shared after ``clients.close_all()`` on an event loop)."""
    return [store for store in list(_STORES) if store._stopping is not None and store._stopping.is_alive()]


def _make_client(cache: Any) -> None:
    """Have a backend make its client now, which imports the client's library: Django's RedisCache
    imports redis, and its memcached backends theirs, only when the client is first used (their
    ``_cache`` property; django-redis: ``client``). That was the first round's ``get_many``, outside
    ``_CONNECTING``: a fork during it left the child's rounds hung on redis's import lock for good.
    Making a client does no I/O; what fails here fails again in the round, which reports it."""
    for name in ("_cache", "client"):
        made_on_use = getattr(type(cache), name, None)  # a property, or a cached one (Django's or functools')
        if made_on_use is not None and hasattr(made_on_use, "__get__") and not callable(made_on_use):
            try:
                getattr(cache, name)
            except Exception:
                return


# Held while a store's thread makes its cache backend and the backend's client, which imports the
# client's library (Django's RedisCache imports redis then: _make_client). A fork() in the middle of
# that import left the child a half-made module whose import lock belonged to a thread the child
# does not have: the child's first cache access hung for ever (gunicorn --preload with a warm-up
# call). fork() waits for it instead, at most CONNECT_WAIT (making a backend and its client does no
# I/O; a backend that hangs in __init__ is not waited for).
CONNECT_WAIT = 5.0
_CONNECTING = ForkWaits(CONNECT_WAIT)


def _after_fork() -> None:
    _late_aliases.clear()
    for store in list(_STORES):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)


# .store: the store whose sync thread this is, while it syncs; .stop: that thread's stop event
_sync_thread = threading.local()
# Sync threads close() stopped waiting for, and whose connections it closed under their round.
_abandoned: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


def _run(ref: "weakref.ref[CacheCircuitStore]", stop: threading.Event, wake: threading.Event, interval: float) -> None:
    # Holds the store only while syncing, so a store nobody uses any more is collected and the thread ends.
    while True:
        wake.wait(interval)
        wake.clear()
        store = ref()
        if store is None:
            return
        _sync_thread.store, _sync_thread.stop = store, stop
        last = stop.is_set()
        try:
            store.sync()  # after stop too: the last flush
            # A round under way when close() set stop left what was counted meanwhile: one more round
            # writes it, unless nothing is left to write or the round failed (a second round on a
            # cache that times out held the thread, and its socket, for twice the timeout). None when
            # close() stopped waiting for the round: it closed the connections under it.
            done = last or (stop.is_set() and not (store.healthy and store._unwritten()))
            if done:
                store._after_last_round()
        finally:
            _sync_thread.store = _sync_thread.stop = None
        del store
        if done or threading.current_thread() in _abandoned:
            return

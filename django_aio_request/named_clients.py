"""``clients["name"]``: clients built from ``settings.AIO_REQUEST``, like Django's ``caches``.

Unlike ``caches`` (an asgiref ``Local``: one object per thread), each client is built once per
process and shared by all threads: its connection pool, worker threads and circuit breaker state
must be process-wide to be of any use.
"""

import atexit
import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from django_aio_request.breaker.cache_store import CacheCircuitStore, closing_together, stopping_stores
from django_aio_request.conf.building import build_client
from django_aio_request.conf.current import InvalidSettings, current, misspelt_setting
from django_aio_request.conf.reader import shown
from django_aio_request.conf.schema import SETTING, AioRequestSettings, ClientSpec
from django_aio_request.core.client import Client
from django_aio_request.core.event_loop import runs_event_loop
from django_aio_request.signals import client_built


class UnknownClientError(KeyError):
    """No client of that name in ``AIO_REQUEST["CLIENTS"]``."""

    def __str__(self) -> str:
        return str(self.args[0])


# How long a thread looking up a client waits for another thread's build of it: to be made, then to
# finish sending client_built (the breaker publisher's receiver waits at most 0.25 s for admin's
# overrides). A build that takes longer may be waiting for the looking thread itself (an import it
# holds, or a receiver waiting for such a lookup): it then makes one in its place (later lookups wait
# for that), and the first made is kept. A build made in another's place is waited for twice as long
# as the one it replaced (1 s, 2 s, 4 s...): with the same wait for each, when every build was slow
# (a classifier's slow __init__), each replacement was replaced in turn a second later, a build of T
# seconds made about T times and the last thread waiting about 2T (a review). A replacement may
# still need replacing (a thread it waits for that waits for it in turn), so it is not waited on forever.
BUILD_WAIT = 1.0


class _Build:
    """A client of one name being made, or made and its ``client_built`` receivers running, in the thread
    that builds it."""

    __slots__ = ("client", "done", "failed", "made", "patience", "replaced", "thread")

    def __init__(self, patience: float = BUILD_WAIT, replaced: "_Build | None" = None) -> None:
        self.replaced = replaced  # the build this one was made in place of: its waiters are woken with this one's
        # None while being made; once done, the client under the name (a test's fake_client() may have come first)
        self.client: Client | None = None
        self.patience = patience  # how long a looking thread waits for it to be made before making one in its place
        self.thread = threading.get_ident()
        self.made = threading.Event()  # made (or its making failed): whoever waits looks again
        self.failed: Exception | None = None  # what its making raised: the threads that waited for it raise it too
        self.done = threading.Event()  # its client_built receivers ran


def _again(error: Exception) -> Exception:
    """``error``, to raise in another thread than the one it was raised in: a copy (one exception
    raised in several threads at once gathers their tracebacks into one), caused by the original,
    which keeps the making's traceback. The original itself when it cannot be copied.

    Made without calling the class's ``__init__`` again: ``copy.copy`` calls it with the error's
    ``args``, and an ``__init__(self, key)`` that builds its message from ``key`` made the message
    of the message (``rule "rule 'x' missing" missing``), and ran its side effects once per waiting
    thread (a review)."""
    cls = type(error)
    try:
        again = cls.__new__(cls, *error.args)  # OSError's __new__ reads errno and strerror from them
        again.args = error.args
        if hasattr(error, "__dict__"):
            again.__dict__.update(vars(error))
    except Exception:
        return error
    again.__cause__ = error
    return again


def unknown_client(name: str, configured: Iterable[str]) -> UnknownClientError:
    """The error for a client ``name`` that the setting does not configure (``configured``: the
    names it does), for ``clients[name]`` and the testing helpers alike. Each name is shown as ``check``
    shows one: a URL pasted as a name (``"http://user:password@billing/"``) without its credentials."""
    known = ", ".join(shown(n) for n in configured) or "none"
    return UnknownClientError(
        f"no client {shown(name)} in {SETTING}['CLIENTS']; configured: {known}{_unset_setting_note()}"
    )


def _unset_setting_note() -> str:
    """Why no client is configured when the setting is not there at all, naming a setting spelt like
    it (``AIO_REQUESTS``): the error said "configured: none" and nothing of the misspelt name, which
    ``check`` passed (a review)."""
    from django.conf import settings

    if hasattr(settings, SETTING):
        return ""
    near = misspelt_setting()
    spelt = f" (settings.{near} is set: a misspelling?)" if near else ""
    return f"; settings.{SETTING} is not set{spelt}"


class ClientsHandler:
    def __init__(self) -> None:
        # Held to look the registry up and change it, never while reading the settings or making a
        # client: reading the settings imports the dotted paths they name, and making a client calls
        # its classifier's and transport's ``__init__``; a module they import may look a client up as
        # it is imported (``AUTH = clients["auth"]``). Held meanwhile, a thread doing so waited for
        # another thread's import of that module, which waited for this lock: both hung for good.
        self._lock = threading.RLock()
        self._clients: dict[str, Client] = {}  # handed out: their build's receivers have run
        self._building: dict[str, _Build] = {}  # built, their receivers running
        self._provisional: list[tuple[str, Client]] = []  # made from provisional settings (see settings)
        self._made: dict[str, int] = {}  # name -> clients put under it by a look-up so far (see made())

    @property
    def settings(self) -> AioRequestSettings:
        """The validated setting (``conf.current``); invalid settings raise ``InvalidSettings`` listing every error.

        Clients made from provisional settings (read while a module they name was half imported:
        conf/reader.py's Deferred) are dropped when a later read finds the settings invalid (a typo
        in that module's name): one was handed out for good while every other client raised."""
        try:
            config = current.settings
        except InvalidSettings:
            self._drop_provisional()
            raise
        if self._provisional and not config.provisional:
            self._provisional = []  # the settings they were made from hold
        return config

    def _drop_provisional(self) -> None:
        with self._lock:
            dropped, self._provisional = self._provisional, []
            for name, client in dropped:
                if self._clients.get(name) is client:
                    del self._clients[name]
        for _, client in dropped:
            client.close()

    def __getitem__(self, name: str) -> Client:
        # Clients made from provisional settings are judged by a read of them first (see settings),
        # which drops them if the settings prove invalid: returned as they were, one was handed out
        # for good where it was the first client the project used (a review).
        _ = self._provisional and self.settings  # raises InvalidSettings, or keeps them once the settings hold
        client = self._clients.get(name)
        if client is not None:
            return client
        waited: _Build | None = None
        while True:
            generation = current._generation
            config = self.settings  # outside the lock: see __init__
            spec = config.clients.get(name)
            if spec is None:
                raise unknown_client(name, config.clients)
            with self._lock:
                client = self._clients.get(name)
                if client is not None:
                    return client
                if current._generation != generation:
                    # The setting changed while it was read (reset() bumps the generation before it
                    # closes the clients): built from what was read, the client was the old settings'
                    # and stayed under the name for good (5 of 5 runs in a review). Read them again.
                    continue
                ours = self._own_build(name, self._building.get(name), waited)
                if ours is not None:
                    self._building[name] = ours
                build, mine = self._building[name], ours is not None
            if mine:
                client = self._keep(name, self._make(name, spec, config.service_name, build), build, generation)
                if client is not None:
                    if config.provisional:
                        with self._lock:
                            self._provisional.append((name, client))
                    return client
            elif build.client is not None:
                return self._await_build(build, build.client)
            else:
                waited = build
                build.made.wait(build.patience)
                if build.failed is not None:
                    # The making this thread waited for failed: its error, not a making of its own.
                    # Each waiting thread made its own one after another before, each waiting out
                    # the one before it (16 threads and a classifier failing after 1.2 s: the last
                    # heard of it after 17.6 s). A later look-up makes it again.
                    raise _again(build.failed)

    @classmethod
    def _own_build(cls, name: str, build: _Build | None, waited: _Build | None) -> _Build | None:
        """(Holding the lock.) The build this thread makes: the first, or one in the place of ``build``
        (waited for twice as long: see BUILD_WAIT); None when it waits for ``build``."""
        if build is None:
            return _Build()
        if cls._takes_over(name, build, waited):
            return _Build(2 * build.patience, replaced=build)
        return None

    @staticmethod
    def _takes_over(name: str, build: _Build, waited: _Build | None) -> bool:
        """(Holding the lock.) Whether this thread makes the client in place of another thread's making
        of it: one it waited for already (BUILD_WAIT) and that still goes on, or any on an event loop's
        thread (waiting would hold every task of the loop). Later lookups then wait for this one, and
        the first made is kept: with each waiter making its own, a 1.5 s making was made once per
        thread waiting (32 of 32 in a review)."""
        if build.client is not None:
            return False  # made: its receivers are running
        if build.thread == threading.get_ident():
            raise RuntimeError(
                f"clients[{name!r}] was looked up while it was being made in the same thread (by its classifier,"
                " its transport or a module they import): it cannot be used before it exists"
            )
        return build is waited or runs_event_loop()

    def _keep(self, name: str, made: Client, build: _Build, generation: int) -> Client | None:
        """The client ``made`` (by ``build``) under ``name``, its receivers run; or None, and ``made``
        closed, when another making was done first, the setting changed or ``close_all()`` ran
        meanwhile (the caller looks again)."""
        with self._lock:
            kept = self._building.get(name)
            # kept is None: close_all() took this making's entry (it closes what is built, not what is
            # being made); kept by a later making that took over and is not done: this one was first.
            keep = (
                kept is not None
                and kept.client is None
                and self._clients.get(name) is None
                and current._generation == generation
            )
            if keep:
                # The waiters of every build in the chain look again and find this one: those of a
                # build replaced meanwhile slept out its whole wait, 2 or 4 s (a review).
                waited_on = kept
                while waited_on is not None:
                    if waited_on is not build:
                        waited_on.made.set()
                    waited_on = waited_on.replaced
                build.client = made
                self._building[name] = build
            elif kept is build:
                # Not kept, and still listed as being made (the setting or CACHES changed meanwhile,
                # or a test's fake took the name): left there, it made this thread's next look-up
                # raise the RuntimeError of a client looked up by its own making, at every look-up
                # until another thread made it (a review).
                del self._building[name]
        build.made.set()
        if keep:
            return self._announce(name, build, made)
        made.close()
        return None

    def _make(self, name: str, spec: ClientSpec, service_name: str | None, build: _Build) -> Client:
        """``build_client()``, outside the lock; when it raises, ``build`` leaves the registry."""
        try:
            return build_client(spec, service_name)
        except BaseException as error:
            with self._lock:
                if self._building.get(name) is build:
                    del self._building[name]
            if isinstance(error, Exception):  # not a KeyboardInterrupt of this thread's: the waiters look again
                build.failed = error
            build.made.set()
            raise

    def _announce(self, name: str, build: _Build, client: Client) -> Client:
        """Send ``client_built`` (outside the lock: a receiver may look clients up), then hand the
        client out. Threads looking it up meanwhile wait for this (:meth:`_await_build`): the breaker
        publisher's receiver has admin's overrides read before any first call. Handed out before
        the receivers ran, 1 to 7 of a fresh worker's 8 first calls reached an endpoint an operator
        had forced open; only the building thread had waited."""
        orphan = None
        try:
            # Every receiver runs, whatever one of them raises (Django logs it): one that raised
            # first left the breaker publisher's unrun, and the client unwatched for good.
            answers = client_built.send_robust(sender=ClientsHandler, name=name, client=client)
        finally:
            with self._lock:
                if self._building.get(name) is build:  # else close_all() took it meanwhile
                    present = self._clients.get(name)
                    if present is None:
                        self._clients[name] = client  # before leaving _building: built() lists it
                        self._made[name] = self._made.get(name, 0) + 1
                    else:  # fake_client() put a client under the name meanwhile: that one stays
                        orphan, build.client = client, present
                    del self._building[name]
            build.done.set()
        if orphan is not None:
            orphan.close()
        for _receiver, answer in answers:
            if isinstance(answer, Exception):
                raise answer  # the builder hears of it, as before; the client stays, its receivers all run
        return build.client or client

    @staticmethod
    def _await_build(build: _Build, client: Client) -> Client:
        """``client``, made by ``build``, once its receivers ran (or the one a test's fake_client() put first)."""
        if build.thread != threading.get_ident() and not runs_event_loop():
            # Not on an event loop's thread: waiting would hold every task of the loop, and a build
            # there does not wait for the overrides either (breaker_publisher.py).
            build.done.wait(BUILD_WAIT)
        return build.client or client

    def __contains__(self, name: object) -> bool:
        return name in self.settings.clients

    def __iter__(self) -> Iterator[str]:
        return iter(self.settings.clients)

    def all(self, initialized_only: bool = False) -> list[Client]:
        if initialized_only:
            return list(self._clients.values())
        return [self[name] for name in self]

    def built(self) -> list[tuple[str, Client]]:
        """(name, client) of every client built so far in this process, those whose build's receivers
        are still running too (the breaker publisher's round must find them); builds none."""
        building = {name: build.client for name, build in list(self._building.items()) if build.client is not None}
        return list({**building, **self._clients}.items())

    def current(self, name: str) -> Client | None:
        """The client under ``name`` now, or None; builds none."""
        return self._clients.get(name)

    def made(self, name: str) -> int:
        """How many clients a look-up has put under ``name`` in this process (for
        ``django_aio_request.testing``: one made while a test's fake was meant to answer)."""
        return self._made.get(name, 0)

    def follower(self, name: str) -> Callable[[], Client]:
        """For a client no longer under ``name`` (a settings change rebuilt the clients, a test's fake
        ended or stands in its place): its ``stand_in``, the client under the name now (built if
        none is). A reference kept from before (``billing = clients["billing"]`` at import, as the
        README shows) then calls what ``clients["billing"]`` would: the client the settings give now,
        or a test's fake. Kept on the old client, it called with the old settings, and past every
        later test's fake to the real endpoint; kept on a fake, it answered from that test's script
        in every test after it (a review). A name no longer in the settings raises
        ``UnknownClientError`` at the call."""
        return functools.partial(self.__getitem__, name)

    def replace(self, name: str, client: Client | None, *, only_if: Client | None = None) -> Client | None:
        """Put ``client`` (None: nothing, the next use builds one) under ``name``; returns the one
        it replaces. With ``only_if``, only while that one is still there (a settings change in
        between rebuilt the clients). For ``django_aio_request.testing``; the caller closes clients."""
        with self._lock:
            previous = self._clients.get(name)
            if only_if is not None and previous is not only_if:
                return None
            if client is None:
                self._clients.pop(name, None)
            else:
                self._clients[name] = client
        return previous

    def close_all(self, *, followed: bool = False) -> None:
        """Close every client built so far; the next ``clients[name]`` builds a new one.

        ``followed``: each closed client's calls go to the one under its name from now on
        (:meth:`follower`; a settings change, not the process's exit).

        Their breakers' shared-state threads are stopped together: a cache that hangs holds this
        ``stall_after`` (1 s) in all, not once per client (it runs at exit and on settings changes).
        A client whose ``close()`` raises does not keep the others open: each is closed, then the
        error is raised (an ``ExceptionGroup`` of them when several raised).
        """
        with self._lock:
            named, self._clients = self._clients, {}
            built = list(named.values())
            if followed:
                for name, client in named.items():
                    client.stand_in = self.follower(name)
            self._provisional = []
            # handed out as their receivers run, closed; one being made is closed by its maker, which finds it gone
            for name, build in self._building.items():
                if build.client is not None:
                    built.append(build.client)
                    if followed:
                        build.client.stand_in = self.follower(name)
            self._building = {}
        stores = [getattr(client.circuit_breaker, "store", None) for client in built]  # one's own breaker: maybe none
        errors: list[Exception] = []
        with closing_together(stores):
            for client in built:
                try:
                    client.close()
                except Exception as error:  # the others are closed all the same, then it is raised
                    errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("closing the named clients failed", errors)

    def reset(self) -> None:
        """Close the clients and read the settings again on next use (settings changed); a reference
        kept to one calls the one built from the new settings (:meth:`follower`). The settings
        are dropped first: a lookup that read the old ones and builds after close_all() sees the
        change (``__getitem__``); one that built before it is closed by it."""
        current.reset()
        self.close_all(followed=True)

    def _after_fork(self) -> None:
        # The child keeps the parent's clients: one client per name per process, so a reference kept
        # across fork() (a module-level ``billing = clients["billing"]``, a gunicorn --preload app that
        # warmed its clients up) is the one ``clients["billing"]`` returns, published and obeying admin's
        # overrides (breaker_publisher.Publisher.after_fork). Each client makes its threads, pools and
        # connections anew on first use in the child (core/client.py, transport/requests_transport.py).
        # Only the lock is new (a thread of the parent, absent here, may have held it), and no build is half done.
        self._lock = threading.RLock()
        self._building = {}  # a build another thread of the parent was in: built anew here


clients = ClientsHandler()


def _close_all_at_exit() -> None:
    """``clients.close_all()``, and the last rounds of the breakers' threads that an earlier close on
    an event loop did not wait for (see stopping_stores), in one shared wait of ``stall_after``."""
    stopping = stopping_stores()
    with closing_together(stopping):
        clients.close_all()
        for store in stopping:
            store.close()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=clients._after_fork)


@receiver(setting_changed)
def _reset_clients(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING or (setting == "CACHES" and _shares_through_a_cache()):
        clients.reset()


def _shares_through_a_cache() -> bool:
    """Whether a client built so far shares its breaker's counts through one of ``CACHES`` (the
    settings then name it, and are valid only while it is there). Changed (``override_settings`` in
    tests), those clients went on counting in the cache they were built with, and a cache removed
    was no settings error: their counts stayed in the process, logged as a cache that failed."""
    return any(isinstance(getattr(c.circuit_breaker, "store", None), CacheCircuitStore) for _, c in clients.built())

"""``clients["name"]``: clients built from ``settings.AIO_REQUEST``, like Django's ``caches``.

Unlike ``caches`` (an asgiref ``Local``: one object per thread), each client is built once per
process and shared by all threads: its connection pool, worker threads and circuit breaker state
must be process-wide to be of any use.
"""

import atexit
import os
import threading
from collections.abc import Iterator
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from django_aio_request.breaker.cache_store import closing_together
from django_aio_request.conf.building import build_client
from django_aio_request.conf.current import current
from django_aio_request.conf.schema import SETTING, AioRequestSettings
from django_aio_request.core.client import Client
from django_aio_request.signals import client_built


class UnknownClientError(KeyError):
    """No client of that name in ``AIO_REQUEST["CLIENTS"]``."""

    def __str__(self) -> str:
        return str(self.args[0])


class ClientsHandler:
    def __init__(self) -> None:
        # Re-entrant: a receiver of client_built, run under it, may look up another client.
        self._lock = threading.RLock()
        self._clients: dict[str, Client] = {}  # handed out: their build's receivers have run
        self._building: dict[str, Client] = {}  # built, their receivers running (under the lock)

    @property
    def settings(self) -> AioRequestSettings:
        """The validated setting (``conf.current``); invalid settings raise ``InvalidSettings`` listing every error."""
        return current.settings

    def __getitem__(self, name: str) -> Client:
        client = self._clients.get(name)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(name) or self._building.get(name)  # building: this thread's receiver
            if client is not None:
                return client
            config = self.settings
            spec = config.clients.get(name)
            if spec is None:
                known = ", ".join(repr(n) for n in config.clients) or "none"
                raise UnknownClientError(f"no client {name!r} in {SETTING}['CLIENTS']; configured: {known}")
            client = self._building[name] = build_client(spec, config.service_name)
            # The receivers run before any thread gets the client: the breaker publisher has admin's
            # overrides read meanwhile (at most its FIRST_READ_WAIT, 0.25 s). Sent after the lock was
            # let go, the builder waited for them while the threads that had waited for the lock
            # called at once: 1 to 7 of 8 first calls reached an endpoint an operator had forced open.
            try:
                client_built.send(sender=ClientsHandler, name=name, client=client)
            finally:
                self._clients[name] = client  # before leaving _building: built() always lists it
                del self._building[name]
        return client

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
        return list({**self._building, **self._clients}.items())

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

    def close_all(self) -> None:
        """Close every client built so far; the next ``clients[name]`` builds a new one.

        Their breakers' shared-state threads are stopped together: a cache that hangs holds this
        ``stall_after`` (1 s) in all, not once per client (it runs at exit and on settings changes).
        """
        with self._lock:
            built, self._clients = list(self._clients.values()), {}
        stores = [getattr(client.circuit_breaker, "store", None) for client in built]  # one's own breaker: maybe none
        with closing_together(stores):
            for client in built:
                client.close()

    def reset(self) -> None:
        """Close the clients and read the settings again on next use (settings changed)."""
        self.close_all()
        current.reset()

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
atexit.register(clients.close_all)
os.register_at_fork(after_in_child=clients._after_fork)


@receiver(setting_changed)
def _reset_clients(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        clients.reset()

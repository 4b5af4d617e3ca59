"""The default transport, on a ``requests.Session``."""

import contextlib
import copy
import functools
import http.client
import http.cookiejar
import logging
import os
import re
import ssl
import sys
import threading
import time
import traceback
import urllib.parse
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import idna
import requests
import urllib3.exceptions
import urllib3.response
from requests.adapters import HTTPAdapter
from requests.sessions import REDIRECT_STATI
from requests.utils import requote_uri, select_proxy
from urllib3 import HTTPResponse
from urllib3.exceptions import DecodeError, LocationParseError, MaxRetryError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.util import parse_url
from urllib3.util.retry import Retry

from django_aio_request.core import headers as h
from django_aio_request.core import status
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.deadline import client_low_timeout_threshold, too_little_to_send
from django_aio_request.core.request import Request, split_url
from django_aio_request.core.response import EmptyResponse, Response, UnreachedResponse, UnsentResponse
from django_aio_request.core.send_again import may_send_again
from django_aio_request.core.timeout_header import restamp
from django_aio_request.transport import direct_send, urllib3_logging
from django_aio_request.transport.attempt_sockets import (
    POOL_CLASSES,
    AttemptSockets,
    NoTimeToSend,
    OutOfStep,
    StaleConnection,
    _is_name,
    current_attempt,
    stop_if_over,
)
from django_aio_request.transport.base import Transport
from django_aio_request.transport.bounded_retries import deadline_bound
from django_aio_request.transport.codings import is_no_coding, left_as_it_came, unreadable_coding
from django_aio_request.transport.deadline_timer import deadline_timer
from django_aio_request.transport.dropped_pools import retire_dropped_pools
from django_aio_request.transport.framing import ChunkAboveLimit, ChunkedFraming, is_chunked
from django_aio_request.transport.hook_errors import RaisedByAHook, innermost, raised_on
from django_aio_request.transport.response_head import HeadTooLarge, length_elements

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 64

#: The most MAX_CONNECTIONS. urllib3 fills each host's connection pool with that many empty slots
#: at its first call, in time and memory in proportion (about 1 microsecond a slot): 10**7 passed the
#: check, and the first call took 7.3 s and 69 MB (a 408, past its TIMEOUT); 10,000 takes about 10 ms
#: (tests/conf/test_reader.py::test_a_client_at_the_most_connections_builds_and_calls_at_once). And
#: 10,000 is past what one process uses: each connection in flight is an attempt running on a thread
#: of its own, and a socket (a file descriptor: 1,024 a process by default on Linux).
MOST_CONNECTIONS = 10_000
_CONNECTIONS_WHY = (
    "each host's connection pool is made with this many slots at the first call, and each connection"
    " in flight takes a thread and a socket of this process"
)

#: The most CONNECT_RETRIES. urllib3 retries by calling itself again, two frames deeper each time:
#: from a shallow stack the 480th retry or so failed with RecursionError (a 489 logged as one, and
#: 30 MB of tracebacks), sooner from a view's deeper stack. 100 (urllib3's own default is 3) keeps
#: 200 frames at most, whatever calls the client
#: (tests/conf/test_reader.py::test_connect_retries_at_the_bound_retry_without_recursion_error).
MOST_CONNECT_RETRIES = 100
_RETRIES_WHY = "urllib3 retries a connection by calling itself again: hundreds of retries end in RecursionError"
# Socket timeouts above this overflow some platforms' limits; the deadline still ends the attempt.
_MAX_SOCKET_TIMEOUT = 86_400.0
#: How much of a redirect's body is read before following it, so that its connection can be reused.
#: A longer one closes its connection instead: the body of a redirect is never the answer.
REDIRECT_BODY_READ = 65_536
_MAX_CACHED_HOSTS = 64
DEFAULT_MAX_RESPONSE_SIZE = 32 * 1024 * 1024
_CHUNK_SIZE = 64 * 1024
# A body urllib3 decodes is read in smaller pieces: the reader looks at the deadline before each
# piece goes to the decoder (_CountingDecoder), and the decoder holds the GIL while it works through
# one. 64 KiB of empty gzip members took 4 ms of CPU to decode to nothing, so with 64 threads reading
# such a flood to the connection's close the calls ended 0.9 s past their deadline at the median,
# 1.3 s at worst; 0.18 s and 0.22 s with 16 KiB (0.09 s and 0.17 s with 8 KiB, which made a 10 MiB
# body 55% slower to decode, where 16 KiB made it 20% slower: docs/benchmarks.md, flood_lateness).
_CODED_CHUNK_SIZE = 16 * 1024


def _read_size(headers: Any, *, decoded: bool) -> int:
    """How much of a body is read at a time: less of one urllib3 decodes (``_CODED_CHUNK_SIZE``)."""
    return _CODED_CHUNK_SIZE if decoded and "Content-Encoding" in headers else _CHUNK_SIZE


#: Set on the synthetic 489 made for a body larger than ``max_response_size``; its value is the limit.
X_RESPONSE_TOO_LARGE = "X-Response-Too-Large"
#: Set on the synthetic 489 made for a body in a coding the client cannot take off (transport/codings.py);
#: its value names it: ``Transfer-Encoding: gzip``, ``Content-Encoding: br``.
X_UNREADABLE_CODING = "X-Unreadable-Coding"
#: Set on the synthetic 488 made for a redirect that cannot be followed; its value says why.
X_INVALID_REDIRECT = "X-Invalid-Redirect"
# A Content-Length of more digits than this (leading zeros aside) is above any size limit.
_MAX_LENGTH_DIGITS = 18


@dataclass(frozen=True, slots=True)
class _Host:
    """What the transport works out once per host: requests' settings from the environment, and the
    direct route to the host's pool (None when requests would send there differently)."""

    settings: dict[str, Any]
    route: direct_send.DirectRoute | None


@dataclass(frozen=True, slots=True)
class _SessionState:
    """What of a session the transport's per-host work (``_host``) depends on, as it was then.

    Compared on every call (well under 1 µs): a session changed after the first call to a host (a
    proxy in ``session.proxies``, auth, a hook) kept sending what it was before, where requests reads
    the session on every call (0 of 5 calls through a proxy set later). Its headers are compared by
    each route instead (``direct_send.with_session_headers``): a token renewed before every call
    planned every host anew, a new SSL context and pool each time (25 ms of CPU a call on https)."""

    proxies: dict[str, Any]
    params: Any
    hooks: dict[str, Any]
    auth: Any
    verify: Any
    cert: Any
    trust_env: bool

    @classmethod
    def of(cls, session: requests.Session) -> "_SessionState":
        return cls(
            dict(session.proxies),
            copy.copy(session.params),
            # A list copied (a hook appended later is seen); one function as it is: a copy of a
            # partial or a callable object is not equal to it, and every call planned anew.
            {event: list(hooks) if isinstance(hooks, list) else hooks for event, hooks in session.hooks.items()},
            session.auth,
            session.verify,
            session.cert,
            session.trust_env,
        )

    def holds(self, session: requests.Session) -> bool:
        return (
            session.proxies == self.proxies
            and session.params == self.params
            and session.hooks == self.hooks
            and session.auth is self.auth
            and session.verify == self.verify
            and session.cert == self.cert
            and session.trust_env == self.trust_env
        )


#: A request ready to send: the prepared request, its settings, and the direct route or None.
_Sendable = tuple[requests.PreparedRequest, dict[str, Any], direct_send.DirectRoute | None]


def _redacted(endpoint: str) -> str:
    """``endpoint`` for logs: credentials in it (``http://user:password@host/``) replaced by ``***``."""
    parts = urllib.parse.urlsplit(endpoint)
    if "@" not in parts.netloc:
        return endpoint
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _logged_target(endpoint: str, request: Request) -> str:
    """What a log line names: the request's URL template joined with the endpoint as the request
    was (``http://billing:8080`` and ``things/{id}`` are ``http://billing:8080/things/{id}``, not
    ``http://billing:8080things/{id}``), credentials redacted; never path or query values, nor a
    query written into the template itself (``get("x?token=...")``), which metrics leave out too."""
    return urllib.parse.urljoin(_redacted(endpoint), request.url.partition("?")[0])


# The pool arguments a TLS context is made from (those loaded into it, and the TLS versions).
_LOADED_ARGUMENTS = direct_send.LOADED_TLS_ARGUMENTS
_TLS_ARGUMENTS = (*_LOADED_ARGUMENTS, "ssl_version", "ssl_minimum_version", "ssl_maximum_version")
_UNREAD: Any = object()


class _GuardedAdapter(HTTPAdapter):
    """An adapter whose connection pools register sockets with the attempt's guard.

    Also those of proxies (from ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` or the session), SOCKS
    ones too (socks_sockets.py): a proxy that trickles would otherwise hold a call past its deadline.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES
        retire_dropped_pools(self.poolmanager)
        # The TLS contexts of requests' own path, certificates loaded once (build_connection_pool_key_attributes).
        self._tls: dict[tuple[Any, ...], ssl.SSLContext | None] = {}
        self._preloaded: set[int] = set()  # their ids, for cert_verify
        self._tls_lock = threading.Lock()
        self._calling = threading.local()  # what get_connection_with_tls_context knows of this thread's call

    def get_connection_with_tls_context(
        self, request: requests.PreparedRequest, verify: Any, proxies: Any = None, cert: Any = None
    ) -> Any:
        """requests' own; through an ``https://`` proxy, without a preloaded context: urllib3 verifies
        the proxy's certificate with the pool's CA arguments, which a preloaded context takes away."""
        proxy = select_proxy(request.url or "", proxies)
        self._calling.to_tls_proxy = proxy is not None and proxy.lower().startswith("https:")
        try:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        finally:
            self._calling.to_tls_proxy = False

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[Any, Any]:
        """requests' pool arguments, with one TLS context per set of certificates, loaded once.

        urllib3 made each new https connection a context and loaded the CA bundle into it (and
        requests' ``cert_verify`` had it load it again into a context of the application's): about
        55 ms of CPU each that no deadline stops. From 32 threads, calls given 0.3 s to a peer
        stalling the handshake ended up to 1.45 s late on this path (a review), where the direct
        route does the same as here (``direct_send._preload_tls``). So a CA bundle or client
        certificate renewed on disk is read by the next transport, as on the direct route."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params.get("scheme") != "https" or getattr(self._calling, "to_tls_proxy", False):
            return host_params, pool_kwargs
        kept = self.poolmanager.connection_pool_kw
        if kept.get("ssl_context") is not None:
            return host_params, pool_kwargs  # the application's own: left alone
        context = {**kept, **{name: value for name, value in pool_kwargs.items() if value is not None}}
        key = (verify is True, verify is False, *(context.get(name) for name in _TLS_ARGUMENTS))
        tls = self._tls.get(key, _UNREAD)
        if tls is _UNREAD:
            # One thread loads; the others of a burst of first calls wait for it (each loaded its own:
            # 27-36 loads for 128 calls from 32 threads, 0.2-0.5 s late).
            with self._tls_lock:
                tls = self._tls.get(key, _UNREAD)
                if tls is _UNREAD:
                    tls = self._tls[key] = direct_send.preloaded_tls(context, verify)
                    if tls is not None:
                        self._preloaded.add(id(tls))  # kept in _tls: no other object takes its id
        if tls is None:
            return host_params, pool_kwargs  # as requests makes it (a bundle that cannot be read: its error)
        # None takes the argument out: loaded in the context, nothing for each connection to load.
        return host_params, {**pool_kwargs, "ssl_context": tls, **dict.fromkeys(_LOADED_ARGUMENTS)}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """requests' checks and settings, less the files a preloaded context holds already (set on
        the pool, each new connection loaded them into the context again)."""
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        if id(getattr(conn, "conn_kw", {}).get("ssl_context")) in self._preloaded:  # urllib3 keeps it there
            for name in _LOADED_ARGUMENTS:
                setattr(conn, name, None)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if proxy.lower().startswith("socks"):
            from django_aio_request.transport.socks_sockets import SOCKS_POOL_CLASSES  # PySocks: only when used

            manager.pool_classes_by_scheme = SOCKS_POOL_CLASSES
        else:
            manager.pool_classes_by_scheme = POOL_CLASSES  # before its first pool: they are made on demand
        retire_dropped_pools(manager)
        return manager

    def close(self) -> None:
        """Close every pool's connections now, then drop the pools.

        urllib3 2.x's ``PoolManager.clear()`` only drops them and leaves the closing to a finalizer,
        which runs when the garbage collector frees a pool: an exception's traceback cycle can keep a
        pool (and its sockets) open until the next ``gc.collect()``. (Pools dropped earlier, because
        more hosts were used than the manager keeps, were retired then: see ``dropped_pools``.)

        Each pool is retired, not closed: a call that picked it just before (a call racing
        ``Client.close()``) still gets a connection, closed when it is given back, where a closed
        pool would raise ``ClosedPoolError`` (a 489 from a healthy server)."""
        for manager in [self.poolmanager, *self.proxy_manager.values()]:
            for key in list(manager.pools.keys()):
                pool = manager.pools.get(key)
                if pool is not None:
                    with contextlib.suppress(Exception):  # best effort: a socket already gone is fine
                        retire = getattr(pool, "retire", None)
                        if retire is not None:
                            retire()
                        else:
                            pool.close()
        super().close()


def _guarded_copy(adapter: HTTPAdapter) -> _GuardedAdapter:
    """A guarded adapter with ``adapter``'s settings: its pool sizes, retries (bounded by each
    attempt's deadline: bounded_retries.py) and the options it gave its pools (``source_address``,
    ``ssl_context``, ... set with ``init_poolmanager``).

    ``adapter`` itself is left as it is (another session may use it): the transport's session mounts
    the copy in its place, as it mounts its own adapters for ``http://`` and ``https://``.
    """
    copy = _GuardedAdapter(
        pool_connections=adapter._pool_connections,  # type: ignore[attr-defined]
        pool_maxsize=adapter._pool_maxsize,  # type: ignore[attr-defined]
        max_retries=deadline_bound(adapter.max_retries),  # its pauses were sleeps past the deadline
        pool_block=adapter._pool_block,  # type: ignore[attr-defined]
    )
    kept = getattr(adapter.poolmanager, "connection_pool_kw", {})
    extra = {name: value for name, value in kept.items() if name not in ("maxsize", "block")}
    if extra:
        copy.init_poolmanager(copy._pool_connections, copy._pool_maxsize, block=copy._pool_block, **extra)  # type: ignore[attr-defined]
    return copy


def _is_requests_default(retries: object) -> bool:
    """Whether ``retries`` are what ``HTTPAdapter()`` gets by default (no retry but on a stale connection)."""
    return type(retries) is Retry and vars(retries) == vars(Retry(0, read=False))


def _scheme_adapter(
    prefix: str, mounted: object, retries: Retry, max_connections: int, connect_retries: int
) -> _GuardedAdapter:
    """The guarded adapter the transport mounts for ``prefix`` (``http://`` or ``https://``), with the
    settings of the session's own adapter there: the options it gave its pools (an ``ssl_context``
    with a client certificate or a private CA, ``source_address``, ...) and its retries, bounded by
    the deadline (bounded_retries.py). Replaced by a bare one, such an adapter's settings were dropped
    without a word. Its pool size is ``max_connections`` (the transport's slots: urllib3 never has to
    throw a connection away). An adapter of another class cannot be kept there (every call goes
    through that prefix, and none would be bounded): ValueError, saying where it can go."""
    made = _GuardedAdapter(pool_connections=16, pool_maxsize=max_connections, max_retries=retries)
    made._aio_request_retries = True  # type: ignore[attr-defined] # the retries are a transport's, not a user's
    if mounted is None:
        return made
    if type(mounted) not in (HTTPAdapter, _GuardedAdapter):
        raise ValueError(
            f"the session's adapter for {prefix!r} is a {type(mounted).__name__}, where this transport mounts its own"
            " (which bounds each call by its deadline) and would drop it: mount it for the hosts it is for"
            " (session.mount('https://billing.internal/', adapter)), where it is used as it is, its calls"
            " not bounded by the deadline (docs/usage.md)"
        )
    assert isinstance(mounted, HTTPAdapter)
    theirs = mounted.max_retries
    if not (getattr(mounted, "_aio_request_retries", False) or _is_requests_default(theirs)):
        if connect_retries:
            raise ValueError(
                f"connect_retries={connect_retries} and the session's adapter for {prefix!r} has retries of its own"
                f" ({theirs!r}): set one of them"
            )
        made.max_retries = deadline_bound(theirs)
        made._aio_request_retries = False  # type: ignore[attr-defined]
    kept = getattr(mounted.poolmanager, "connection_pool_kw", {})
    extra = {name: value for name, value in kept.items() if name not in ("maxsize", "block")}
    if extra:
        made.init_poolmanager(16, max_connections, block=False, **extra)
    return made


def _stamp_time_left(sent: requests.PreparedRequest | None, remaining: Callable[[], float]) -> None:
    """Before requests sends ``sent`` (or, for a redirect, the next hop a copy of its headers): an
    ``X-Request-Timeout`` the pipeline stamped (a ``StampedTimeout``) is made the time left now.
    One the caller or a request enricher set themselves (a plain ``str``) is theirs: left as it is.
    The transport's own connections stamp it again as they send (attempt_sockets.py); this is for an
    adapter of the session's own, whose connections do not."""
    if sent is not None:
        restamp(sent.headers, remaining())


class RequestsTransport(Transport):
    """Sends attempts with ``requests``, bounding each one by its deadline on the wall clock.

    ``session``: a session to send with, fully configured before it is given here (requests
    sessions are shared between threads only if nothing mutates them afterwards). Its adapters for
    ``http://`` and ``https://`` are replaced by ones that enforce deadlines, and so is a plain
    ``HTTPAdapter`` mounted for a longer prefix (by one with its settings: ``_guarded_copy``); an
    adapter of another class is used as it is, and only the time left when an attempt starts bounds
    each of its waits on the socket, not the attempt (docs/usage.md). Headers, auth, certs
    and proxies are kept; its ``max_redirects`` is not used (each request's own is), unless it is 0:
    then requests follows no redirect (a 488). Without one, a session is made that keeps no
    cookies: a cookie one downstream response sets must not ride along on calls made for other users.

    ``max_connections``: attempts in flight at once through this transport, and the size of each
    host's connection pool, so the pool never has to throw a connection away. An attempt that finds
    every slot taken waits for one until its deadline (then it is a 408) or its cancellation (499).

    ``connect_retries``: how many times a connection that failed before anything was sent is tried
    again within the same attempt (and within its deadline).

    ``max_response_size``: the most bytes of (decoded) body an attempt reads, or None for no limit.
    A larger body (by its Content-Length, or once that many bytes were read) is not read further:
    the attempt ends as a 489 with ``X-Response-Too-Large: <limit>`` and ``X-Do-Not-Retry: 1``
    (another attempt would get the same body), and its connection is closed. A head past its own
    limits (response_head.py's ``MAX_HEADER_LINES`` and ``MAX_HEAD_BYTES``) ends the same way, with
    ``X-Response-Too-Large: head``.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_retries: int = 0,
        max_response_size: int | None = DEFAULT_MAX_RESPONSE_SIZE,
    ) -> None:
        if not 1 <= max_connections <= MOST_CONNECTIONS:
            raise ValueError(
                f"max_connections must be from 1 to {MOST_CONNECTIONS}, not {max_connections}: {_CONNECTIONS_WHY}"
            )
        if not 0 <= connect_retries <= MOST_CONNECT_RETRIES:
            raise ValueError(
                f"connect_retries must be from 0 to {MOST_CONNECT_RETRIES}, not {connect_retries}: {_RETRIES_WHY}"
            )
        if max_response_size is not None and (isinstance(max_response_size, bool) or max_response_size < 0):
            raise ValueError(f"max_response_size must be >= 0 or None, not {max_response_size!r}")
        if session is None:
            session = requests.Session()
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        retries = Retry(
            total=connect_retries,
            connect=connect_retries,
            read=False,
            redirect=False,
            status=0,
            other=0,
            backoff_factor=0,
            raise_on_status=False,
        )
        for prefix in ("http://", "https://"):
            mounted = session.adapters.get(prefix)
            session.mount(prefix, _scheme_adapter(prefix, mounted, retries, max_connections, connect_retries))
        for prefix, adapter in list(session.adapters.items()):
            if type(adapter) is HTTPAdapter:  # mounted for a longer prefix: unguarded, a trickle outlasted the deadline
                session.mount(prefix, _guarded_copy(adapter))
        self._session = session
        # The hosts worked out, with the state of the session they were worked out for: replaced
        # together, so a host planned from a session that changed meanwhile goes into a table no
        # call looks at any more (kept, it served the old session for good).
        self._plans: tuple[_SessionState, dict[str, _Host]] = (_SessionState.of(session), {})
        # A lock per host whose route a thread is working out (_host), while it does; and the lock of that dict.
        self._planning: dict[str, threading.Lock] = {}
        self._planning_guard = threading.Lock()
        self._slots = threading.Condition(threading.Lock())
        self._free_slots = max_connections
        self.max_connections = max_connections
        self.max_response_size = max_response_size
        urllib3_logging.install()  # urllib3 logs a retried or unparsable request's URL at WARNING
        _transports.add(self)

    def _after_fork_in_child(self) -> None:
        """A forked child's transport: pools and slots of its own.

        The parent's pooled keep-alive connections are the parent's sockets too: parent and child
        calling at once on one of them read each other's answers. And the slots taken by the
        parent's calls in flight at the fork are never given back here (with ``max_connections=1``
        every call of the child was a 408). The parent's pools are dropped, not closed: closing
        takes their locks, which a thread of the parent may have held at the fork, and the child's
        copies of the sockets close when the pools are freed, which leaves the parent's open.
        """
        self._slots = threading.Condition(threading.Lock())
        self._free_slots = self.max_connections
        self._plans = (_SessionState.of(self._session), {})  # their direct routes name the parent's pools
        self._planning = {}  # a thread of the parent may have held them at the fork
        self._planning_guard = threading.Lock()
        for adapter in list(self._session.adapters.values()):
            if isinstance(adapter, HTTPAdapter):
                connections, most, block = adapter._pool_connections, adapter._pool_maxsize, adapter._pool_block  # type: ignore[attr-defined]
                # And the options a user's adapter gave its pools (source_address, ssl_context, ...).
                kept = getattr(adapter.poolmanager, "connection_pool_kw", {})
                extra = {name: value for name, value in kept.items() if name not in ("maxsize", "block")}
                adapter.init_poolmanager(connections, most, block=block, **extra)
                adapter.proxy_manager = {}

    def send(
        self, endpoint: str, request: Request, timeout: float, cancellation: Cancellation | None = None
    ) -> Response:
        started = time.monotonic()
        # The caller's own mistakes (an invalid URL, header or body) raise here, before anything is
        # sent; from then on, whatever the peer answers ends as a status.
        sendable = self._prepare(endpoint, request)
        guard = AttemptSockets(started + timeout)
        attempt_over = None
        if cancellation is not None:
            guard.release_after = cancellation.release_after
            attempt_over = cancellation.watch_attempt(
                functools.partial(self._cancel, guard, cancellation), guard.answer_in_hand
            )
        try:
            if not self._acquire_slot(guard):
                # Cancelled or out of time before it had a connection: nothing was sent.
                return UnsentResponse(status=guard.reason or status.TIMEOUT, elapsed=time.monotonic() - started)
            cancel_watch = deadline_timer.schedule(guard.deadline, lambda: guard.abort(status.TIMEOUT))
            try:
                with guard.active():
                    response = self._send_or_send_again(sendable, request, endpoint, guard, started)
                if guard.reason is not None:
                    # The EOF an abort causes can pass for the end of the headers, or of a body without
                    # Content-Length: what was read may be cut short, so it is not the server's answer.
                    raise requests.ConnectionError("the attempt was aborted while its response was read")
                return response
            except RaisedByAHook as raised:  # the application's code, not the peer's doing: raised on
                hook_error = raised.error  # below, out of this block: chained to the wrapper, it made a cycle
            except Exception as error:  # anything a malformed answer makes requests or urllib3 raise
                try:
                    return self._failure(request, endpoint, error, guard, started)
                finally:
                    _let_go(error)
            finally:
                cancel_watch()
                guard.close()
                self._release_slot()
            try:
                raise hook_error
            finally:
                del hook_error  # a local of a frame in its own traceback: a cycle that kept the answer
        finally:
            if attempt_over is not None:
                attempt_over()

    def _host(self, url: str) -> _Host:
        """requests' settings from the environment (proxies, CA bundle) for ``url``'s host, and the
        direct route to it (``direct_send``).

        requests reads the environment from ``os.environ`` on every call, a fifth of a loopback
        call's time; the environment of a running service does not change, so it is read once per
        host (and so is a netrc file).

        One thread at a time works a host out; the others calling that host wait and take its result
        (calls to other hosts do not wait: a CA bundle on a hanging file system held every host's
        first call). Each of 32 threads calling a fresh transport's https host at once planned the
        route itself, each loading the CA bundle (~55 ms of CPU, before the attempt's deadline is
        watched): calls given 0.3 s ended 1.0 to 2.5 s past it.
        """
        parts = split_url(url)  # not Python's cached urlsplit: it keeps 128 URLs of any length
        key = f"{parts.scheme}://{parts.netloc}"
        session = self._session
        state, hosts = plans = self._plans
        if not state.holds(session):
            # The session changed since the hosts were worked out (a proxy set, auth, hooks): work
            # them out again, as requests reads the session on every call. Its headers are not
            # looked at here: a route takes them on its own (below), keeping its pool.
            state, hosts = plans = self._plans = (_SessionState.of(session), {})
        found = hosts.get(key)
        if found is None:
            with self._planning_guard:
                lock = self._planning.setdefault(key, threading.Lock())
            try:
                with lock:
                    found = self._plans[1].get(key)  # worked out while this thread waited
                    if found is None:
                        found = self._plan(url)
                        if len(hosts) >= _MAX_CACHED_HOSTS:
                            hosts.clear()  # redirects to ever new hosts must not grow it without end
                        if self._plans is plans and state.holds(session):  # else the session changed meanwhile
                            hosts[key] = found
            finally:
                with self._planning_guard:
                    if self._planning.get(key) is lock and not lock.locked():
                        del self._planning[key]  # planned (or failed): the next caller looks at the table first
        if found.route is not None:
            route = direct_send.with_session_headers(found.route, session)
            if route is not found.route:  # the session's headers changed (a token renewed)
                found = _Host(found.settings, route)
                hosts[key] = found
        return found

    def _plan(self, url: str) -> _Host:
        self._check_target(url)  # once per host: its checks depend on nothing else
        # The session's own certificates win over REQUESTS_CA_BUNDLE (requests lets the variable
        # replace a session's verify, psf/requests#3829); a session left at verify=True takes it.
        verify = self._session.verify
        own = None if verify is True else verify
        settings = dict(self._session.merge_environment_settings(url, {}, False, own, None))
        return _Host(settings, direct_send.plan_route(self._session, _GuardedAdapter, url, settings))

    def _acquire_slot(self, guard: AttemptSockets) -> bool:
        """Take a slot, waiting for one until less time is left than the client sends an attempt with
        (its LOW_TIMEOUT_THRESHOLD); False if the attempt ended first, or has too little time left.

        An attempt cancelled before it starts takes no slot, so it never picks up (and shuts down)
        a pooled keep-alive connection just to abort it. One that waited took the slot freed at its
        deadline's edge, and went out with ``X-Request-Timeout: 0.000`` (a review: 2 of 10 calls).
        """
        threshold = client_low_timeout_threshold.get()
        with self._slots:
            while guard.reason is None:
                left = guard.remaining()
                if too_little_to_send(left):
                    return False
                if self._free_slots:
                    self._free_slots -= 1
                    return True
                self._slots.wait(left - threshold)
            return False

    def _release_slot(self) -> None:
        with self._slots:
            self._free_slots += 1
            self._slots.notify_all()  # waiters re-check; a notify() could go to one that is giving up

    def _cancel(self, guard: AttemptSockets, cancellation: Cancellation) -> None:
        # Read at the cancel, not at the send: an async call stopped by its task clears it first
        # (core/client.py), and its attempts' connections are shut down rather than drained.
        guard.abort(status.CANCELLED, release=cancellation.release_after is not None)
        with self._slots:
            self._slots.notify_all()  # wake the attempt if it is waiting for a slot

    def _prepare(self, endpoint: str, request: Request) -> _Sendable:
        """The request as requests sends it, its settings, and the direct route to take or None;
        raises for the caller's mistakes."""
        url = request.build_url(endpoint)
        host = self._host(url)
        route = host.route
        if route is not None and direct_send.still_direct(self._session, route, url, request):
            return direct_send.prepare(route, url, request), host.settings, route
        prepared = self._session.prepare_request(
            requests.Request(method=request.method, url=url, headers=request.headers, data=request.body)
        )
        if prepared.url != url:
            host = self._host(prepared.url or "")  # requests normalised the host: its own settings
        return prepared, host.settings, None

    def _check_target(self, url: str) -> None:
        """Raise if ``url`` cannot be sent at all: no adapter for its scheme (``InvalidSchema``),
        unparsable (``LocationParseError``), no host, port 0, or a host name that is no valid name."""
        self._session.get_adapter(url)
        parsed = parse_url(url)
        host = parsed.host
        if not host:
            raise requests.exceptions.InvalidURL(f"no host in {url!r}")
        if parsed.port == 0:
            # No server listens on port 0 (setup() refuses an endpoint with it): followed, the connect
            # failed, a 489 retried and counted against the endpoint that sent the redirect (a review).
            raise requests.exceptions.InvalidURL("port 0")
        problem = host_name_problem(host)
        if problem is not None:
            raise LocationParseError(f"{host!r}: {problem}")

    def _next_hop(
        self,
        response: requests.Response,
        sent: requests.PreparedRequest,
        kwargs: dict[str, Any],
        remaining: Callable[[], float],
        endpoint_only: frozenset[str],
    ) -> tuple[str | None, requests.Response | None]:
        """Follow the redirect ``response`` (to ``sent``'s next hop): (None, the next answer), or
        (why it cannot be followed, None). ``endpoint_only``: the (lowercase) names of headers not
        sent to another origin (the request enricher's: ``Request.enricher_headers``)."""
        with _followed_location(response):
            problem, target = self._redirect_target(response)
            if problem is not None:
                return problem, None
            _drop_body(response)
            _stamp_time_left(response.request, remaining)
            if endpoint_only and self._session.should_strip_auth(sent.url or "", target):  # type: ignore[no-untyped-call]
                # The rule requests applies to Authorization: another host, port or scheme (but
                # http to https on the default ports). The hops after it are made from this copy.
                sent = sent.copy()
                for name in [name for name in sent.headers if name.lower() in endpoint_only]:
                    del sent.headers[name]
            guard = current_attempt()
            if guard is not None:
                # The redirect read is not the answer the attempt waits for now: said here as well as
                # when a guarded pool hands out the next hop's connection, since an adapter of the
                # caller's own mounted for the target has pools of its own (a hedge never went).
                guard.next_request()
            # One hop, from a generator of its own: requests counts the hops of one generator against
            # the session's max_redirects (30 by default) and raised TooManyRedirects past it,
            # whatever the request allowed. The request's max_redirects is the limit, counted here;
            # the session (maybe the caller's, shared) is left as it is.
            return None, next(self._session.resolve_redirects(response, sent, **kwargs))

    def _followed_problem(self, answer: requests.Response | None) -> str | None:
        """:meth:`_redirect_problem` of ``answer`` if it is a redirect, else None."""
        if answer is None or not answer.is_redirect:
            return None
        with _followed_location(answer):
            return self._redirect_problem(answer)

    def _redirect_problem(self, response: requests.Response) -> str | None:
        """Why the redirect ``response`` cannot be followed, or None."""
        return self._redirect_target(response)[0]

    def _redirect_target(self, response: requests.Response) -> tuple[str | None, str]:
        """(why the redirect ``response`` cannot be followed, or None; the URL it goes to, worked out
        the way requests follows it). A peer's ``Location`` is input like any other: it must end as
        a status, not raise."""
        try:
            target = self._session.get_redirect_target(response)
        except UnicodeError:
            return "Location is not UTF-8", ""
        if not target:
            return "empty Location", ""
        try:
            if target.startswith("//"):
                target = f"{split_url(response.url).scheme}:{target}"
            parsed = split_url(target)
            url = requote_uri(target) if parsed.netloc else urllib.parse.urljoin(response.url, requote_uri(target))
            self._check_target(url)
        except (ValueError, requests.RequestException) as error:  # LocationParseError and UnicodeError too
            return type(error).__name__, ""  # not its message: it holds the URL, path values and all
        return None, url

    def _send_or_send_again(
        self, sendable: _Sendable, request: Request, endpoint: str, guard: AttemptSockets, started: float
    ) -> Response:
        """:meth:`_send`, and once more on a fresh connection when the server closed the kept-alive
        one as the request went out and the request may go again (:func:`_may_send_again`)."""
        try:
            return self._send(sendable, request, endpoint, guard, started)
        except Exception as error:
            if not _may_send_again(error, request, guard):
                raise
            if not _time_to_send_again(guard):
                guard.abort(status.TIMEOUT)  # what ends it is the deadline: a 408, not a 489
                raise
            if not may_send_again():  # the retry budget pays for it, as for an extra attempt
                raise
            what = _stale_what(_wrapped(error, StaleConnection))
            _let_go(error)
        logger.debug("%s %s: %s; sent again on a fresh one", request.method, _logged_target(endpoint, request), what)
        guard.fresh = True
        return self._send(sendable, request, endpoint, guard, started)

    def _send(
        self,
        sendable: _Sendable,
        request: Request,
        endpoint: str,
        guard: AttemptSockets,
        started: float,
    ) -> Response:
        prepared, settings, route = sendable
        remaining = min(max(guard.remaining(), 0.001), _MAX_SOCKET_TIMEOUT)
        first: requests.Response | None = None
        if route is not None:
            raw = direct_send.send(self._session, route, prepared, remaining)
            if not (request.allow_redirects and raw.status in REDIRECT_STATI and "location" in raw.headers):
                return self._answer(request, endpoint, raw, started, prepared.headers.get("Accept-Encoding"))
            first = direct_send.as_requests_response(route, prepared, raw)  # followed by requests
        else:
            _stamp_time_left(prepared, guard.remaining)  # the time left after the wait for a slot
        # stream=True: the body is read below in chunks, so that its size can be bounded.
        kwargs = {**settings, "timeout": (remaining, remaining), "stream": True}
        outcome = self._send_with_requests(
            prepared, kwargs, request, endpoint, started=started, first=first, remaining=guard.remaining
        )
        if isinstance(outcome, Response):
            return outcome
        # The last request's Accept-Encoding, after redirects: see _answer for why this comes first.
        # A hook may answer a Response of its own, with no request (requests returns it as it is).
        last = outcome.request or prepared
        unreadable = unreadable_coding(outcome.headers, last.headers.get("Accept-Encoding"))
        # An adapter of the user's may answer a Response made in memory, with no ``raw`` (its body
        # in ``_content``): requests reads it, and here it failed as a 489 on ``raw.tell()``.
        raw = outcome.raw
        try:
            bodiless = _bodiless(last.method or "", outcome.status_code)  # the last hop's method
            if raw is not None and _runs_to_the_close(outcome.headers, unreadable, bodiless):
                return _unreadable_answer(request, endpoint, started, cast(str, unreadable))
            if raw is None:  # what requests' ``content`` gives: the body made in memory
                body = self._read_body(outcome.headers, iter([outcome.content or b""]), bodiless=bodiless)
            elif unreadable is None and not left_as_it_came(outcome.headers, last.headers.get("Accept-Encoding")):
                chunks = outcome.iter_content(_read_size(outcome.headers, decoded=True))
                body = self._read_body(outcome.headers, chunks, bodiless=bodiless, raw=raw, decoded=True)
                _check_decoded_to_the_end(raw, body)
            else:  # read as it came: for _answered() to refuse, or the caller's to decode
                chunks = raw.stream(_CHUNK_SIZE, decode_content=False)
                body = self._read_body(outcome.headers, chunks, bodiless=bodiless, raw=raw)
        finally:
            if raw is not None:
                outcome.close()  # a body left unread closes the connection instead of pooling it
        return self._answered(
            request, endpoint, outcome.status_code, outcome.headers, body, unreadable=unreadable, started=started
        )

    def _send_with_requests(  # noqa: PLR0912 - each outcome of a hop, in the order requests meets them
        self,
        prepared: requests.PreparedRequest,
        kwargs: dict[str, Any],
        request: Request,
        endpoint: str,
        *,
        started: float,
        first: requests.Response | None,
        remaining: Callable[[], float],
    ) -> requests.Response | Response:
        """Send with requests' ``Session.send`` (or take ``first``, an answer already received) and
        follow redirects: the final answer unread, or the status that ends the attempt.

        ``remaining()``: the attempt's time left now, which each redirect's target is told in place
        of the ``X-Request-Timeout`` the pipeline stamped (requests resends the headers as prepared)."""
        session = self._session
        # Every response received (redirects too), as soon as it is: requests parses a redirect's
        # Location inside send() even with allow_redirects=False, and one it cannot parse raises
        # there (ValueError, InvalidURL, ...), before the response could be looked at.
        answers: list[requests.Response] = []

        def received(answer: requests.Response, **_: Any) -> None:
            answers.append(answer)
            _hide_location(answer)

        hooks = prepared.hooks["response"]  # the session's and the caller's, put back when done
        prepared.hooks["response"] = [*map(raised_on, hooks), received]
        try:
            if first is None:
                response = session.send(prepared, allow_redirects=False, **kwargs)
                _show_location(response)
            else:
                response = first
                answers.append(first)
            if request.allow_redirects and response.is_redirect:
                sent = prepared
                for _ in range(request.max_redirects):
                    problem, following = self._next_hop(response, sent, kwargs, remaining, request.enricher_headers)
                    if following is None:
                        response.close()
                        return self._invalid_redirect(request, endpoint, response, str(problem), started)
                    response = following
                    _show_location(response)
                    sent = response.request or sent  # what requests sent: the next hop is made from it
                    if not response.is_redirect:
                        break
                else:
                    response.close()
                    return self._too_many_redirects(response, started)
        except Exception as error:
            _show_location(*answers)
            if isinstance(error, RaisedByAHook):
                raise
            answer = answers[-1] if answers else None
            if isinstance(error, requests.TooManyRedirects) and answer is not None and request.allow_redirects:
                # A caller's session whose own max_redirects is below 1: requests follows no redirect.
                answer.close()
                return self._too_many_redirects(answer, started)
            problem = self._followed_problem(answer)
            if answer is None or problem is None:
                raise
            if request.allow_redirects:
                answer.close()
                return self._invalid_redirect(request, endpoint, answer, problem, started)
            response = answer  # not followed: the redirect itself is the answer
        finally:
            # The hook holds ``answers``, whose responses hold ``prepared`` (``response.request``), which
            # holds the hook: emptied, the cycle no longer keeps the responses until the garbage collector.
            answers.clear()
            # And unwrapped: a request sent again on a fresh connection (_send_or_send_again) comes
            # back here, where its hooks were wrapped a second time around this try's ``received``,
            # which then filled the emptied list again and kept its answers in that cycle.
            prepared.hooks["response"] = hooks
        return response

    def _answer(
        self, request: Request, endpoint: str, raw: HTTPResponse, started: float, accepted: str | None
    ) -> Response:
        """The Response for an answer urllib3 received on the direct route (``direct_send``)."""
        consumed = False
        try:
            bodiless = _bodiless(request.method, raw.status)
            # A body in a coding this client cannot take off is read as it came, for _answered() to
            # refuse: urllib3 gives each coding of a list a decoder, deflate's to one it does not know
            # (``gzip, br`` without brotli), whose DecodeError was a plain 489, retried and counted
            # against the endpoint, where ``br`` alone was the 489 that says so and is not retried.
            unreadable = unreadable_coding(raw.headers, accepted)
            if _runs_to_the_close(raw.headers, unreadable, bodiless):
                return _unreadable_answer(request, endpoint, started, cast(str, unreadable))  # closed below
            decode = unreadable is None and not left_as_it_came(raw.headers, accepted)
            body = self._read_body(
                raw.headers,
                raw.stream(_read_size(raw.headers, decoded=decode), decode_content=decode),
                bodiless=bodiless,
                raw=raw,
                decoded=decode,
            )
            if decode:
                _check_decoded_to_the_end(raw, body)
            consumed = body is not None
        finally:
            # As requests' Response.close(): a body left unread closes the connection instead of
            # pooling it; one read to its end is back in the pool already.
            if not consumed:
                raw.close()
            raw.release_conn()
        return self._answered(request, endpoint, raw.status, raw.headers, body, unreadable=unreadable, started=started)

    def _answered(
        self,
        request: Request,
        endpoint: str,
        status_code: int,
        headers: Any,
        body: bytes | None,
        *,
        unreadable: str | None,
        started: float,
    ) -> Response:
        """The Response for an answer whose body was read (``body``), or was too large (None);
        ``unreadable``: the coding that leaves the body unreadable (``unreadable_coding``), or None."""
        if not 100 <= status_code <= 599:
            # The status-line parser refuses these on the wire (response_head.py); an adapter mounted
            # on the session (``responses`` in tests, say) hands over whatever status it was given.
            return _refused(
                request,
                endpoint,
                started,
                status.NETWORK_ERROR,
                what="the response's status is not one of HTTP's (100-599)",
                detail=str(status_code),
                headers={},
            )
        if body is None:
            return _refused(
                request,
                endpoint,
                started,
                status.NETWORK_ERROR,
                what="the response is larger than max_response_size and was not read",
                detail=f"{self.max_response_size} bytes",
                headers={X_RESPONSE_TOO_LARGE: str(self.max_response_size), h.X_DO_NOT_RETRY: "1"},
            )
        if unreadable is not None and body:  # an empty body (a 204, a HEAD's answer) is the answer
            return _unreadable_answer(request, endpoint, started, unreadable)
        return Response(status=status_code, headers=headers, body=body, elapsed=time.monotonic() - started)

    @staticmethod
    def _too_many_redirects(response: requests.Response, started: float) -> Response:
        """The 488 for a redirect past the request's ``max_redirects``: not followed."""
        return EmptyResponse(
            status=status.TOO_MANY_REDIRECTS,
            elapsed=time.monotonic() - started,
            headers={h.LOCATION: response.headers.get(h.LOCATION, "")},
        )

    @staticmethod
    def _invalid_redirect(
        request: Request, endpoint: str, response: requests.Response, problem: str, started: float
    ) -> Response:
        headers = {h.LOCATION: response.headers.get(h.LOCATION, ""), X_INVALID_REDIRECT: problem}
        return _refused(
            request,
            endpoint,
            started,
            status.TOO_MANY_REDIRECTS,
            what="a redirect that cannot be followed",
            detail=problem,
            headers=headers,
        )

    def _read_body(
        self, headers: Any, chunks: Iterator[bytes], *, bodiless: bool, raw: Any = None, decoded: bool = False
    ) -> bytes | None:
        """The whole (decoded) body read from ``chunks``, or None if it is larger than
        ``max_response_size``.

        ``bodiless``: an answer that has no body by definition (see :func:`_bodiless`), whose
        Content-Length is the size of the resource, not of a body to read: never refused for it.
        ``raw``: the urllib3 response ``chunks`` come from (None: a body made in memory), whose chunks
        are bounded as they are declared (:func:`_bound_chunks`); ``decoded``: ``chunks`` decode it,
        and its coded bytes are bounded too (:func:`_bound_coded_bytes`)."""
        limit = self.max_response_size
        if limit is None and decoded and raw is not None and not bodiless:
            _bound_coded_bytes(raw, None)  # for what else its decoder's wrapper does (_CountingDecoder)
        if limit is not None and not bodiless:
            most = self._most_on_the_wire(headers, limit, raw, decoded)
            if most is not None:
                # The declared length is the body on the wire, held to what may come on the wire:
                # the limit, or for a body urllib3 decodes, its coded bytes' bound (a gzip body of
                # 30 bytes holding 10 was refused under a limit of 20; one declared far above the
                # bound, or a body read as it came declared above the limit, was read from a server
                # that sent no more until the deadline: a review).
                if _declared_length(headers.get("Content-Length", "")) > most:
                    return None
                if raw is not None:
                    _bound_chunks(raw, most)
        try:
            return _joined(chunks, limit)
        except _CodedBodyTooLarge:
            return None
        except Exception as error:
            if _wrapped(error, ChunkAboveLimit) is None:
                raise
            return None

    @staticmethod
    def _most_on_the_wire(headers: Any, limit: int, raw: Any, decoded: bool) -> int | None:
        """The most bytes of body that may come on the wire under ``limit``: the limit for a body in
        no coding or one read as it came (not ``decoded``, or in a coding urllib3 has no decoder
        for), a multiple of it for one urllib3 decodes (:func:`_bound_coded_bytes`); None for a
        coded body made in memory (``raw`` None), whose ``Content-Length`` may be its coded size."""
        encoding = headers.get("Content-Encoding")
        if encoding is None or all(is_no_coding(part) for part in encoding.split(",") if part.strip()):
            return limit
        if raw is None:
            return None
        if decoded and _bound_coded_bytes(raw, limit):
            return _CODING_TIMES * limit + _CODING_ROOM
        return limit

    @staticmethod
    def _failure(request: Request, endpoint: str, error: Exception, guard: AttemptSockets, started: float) -> Response:
        elapsed = time.monotonic() - started
        late = _wrapped(error, NoTimeToSend)
        if late is not None and not late.fresh and not guard.reached:
            # Too little time left on a kept-alive connection, the attempt's first request: the time
            # went waiting for this client's own connections, as for a slot (_acquire_slot).
            return UnsentResponse(status=guard.reason or status.TIMEOUT, elapsed=elapsed)
        if guard.reason is not None:
            code = guard.reason
        elif late is not None:
            # Connecting took the time (counted as a connect timeout is: unreachable, for the breaker),
            # or a later request of the attempt (a redirect's next hop) had none left after an earlier
            # one was sent (an answer that came too late, as ever: a review's slow redirecting endpoint
            # was never counted while this ended as unsent).
            code = status.TIMEOUT
        elif _is_timeout(error):
            # When the socket timeout (set to the time left) beats the deadline timer, it is still the
            # deadline.
            code = status.TIMEOUT
        elif isinstance(error, requests.TooManyRedirects):
            code = status.TOO_MANY_REDIRECTS
        elif (too_large := _wrapped(error, HeadTooLarge)) is not None:
            # As a body past max_response_size: the endpoint answered, and would send the same head
            # again, so it is not retried and the breaker counts the endpoint as answering.
            return _refused(
                request,
                endpoint,
                started,
                status.NETWORK_ERROR,
                what="the response's head is larger than this client takes and was not read",
                detail=str(too_large),
                headers={X_RESPONSE_TOO_LARGE: "head", h.X_DO_NOT_RETRY: "1"},
            )
        else:
            # Refused, reset, cut short, or an answer that is not valid HTTP: a malformed status line
            # or Content-Length (requests' InvalidHeader), a body that does not decode, or whatever
            # else requests or urllib3 raise on what the peer sent. The request was valid (_prepare).
            code = status.NETWORK_ERROR
        if code != status.CANCELLED:
            # At the deadline the timer shut the socket down, and what urllib3 raised then (a
            # ProtocolError, a ConnectionError) named a broken peer: the log says the deadline.
            why = "the deadline ran out" if code == status.TIMEOUT else _what_failed(error)
            if code == status.NETWORK_ERROR and (stale := _wrapped(error, StaleConnection)) is not None:
                again = "after it was sent again once, on a fresh connection" if guard.fresh else "not sent again"
                why = f"{type(stale).__name__}: {_stale_what(stale)}, {again}"
            elif code == status.NETWORK_ERROR and not isinstance(error, _HTTP_AND_NETWORK_ERRORS):
                why = f"{why}, raised in {_raised_in(error)}"
            logger.warning(
                "%s %s failed after %.3fs: %s (status %s)",
                request.method,
                _logged_target(endpoint, request),
                elapsed,
                why,
                code,
            )
        # Nothing went out on a connection: the endpoint is unreachable (the breaker counts it), and
        # the server received nothing (the retry budget takes no deposit for it).
        outcome = EmptyResponse if guard.reached else UnreachedResponse
        return outcome(status=code, elapsed=elapsed)

    def close(self) -> None:
        """Close every pooled connection now (of proxies too), not when the garbage collector frees
        the pools (``_GuardedAdapter.close``). An attempt still running keeps its connection until
        it ends; it is closed then, as it cannot go back to a closed pool."""
        self._session.close()


#: A label of a host name once in ASCII (lower case): letters, digits and hyphens (RFC 1123), and the
#: underscore, which DNS carries and resolvers look up (Docker Compose names services ``my_api``).
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
#: The most characters of a host name (without a trailing dot): 255 octets on the wire (RFC 1035).
MOST_NAME_CHARACTERS = 253


def host_name_problem(host: str) -> str | None:
    """Why ``host`` can never be looked up, or None if it can (or if it is an IP address).

    A name is taken as urllib3 sends it (``_as_sent``: a label not in ASCII encoded by IDNA 2008).
    It must be at most 253 characters (a trailing dot aside, which a name may end with), each label
    of letters, digits, ``-`` or ``_``, and each ``xn--`` label punycode for a label that is not all
    ASCII. Refused otherwise: ``a%20b`` (``http://a b/`` once requoted), a 260-character name and
    ``xn--zz-`` each went to the resolver, and its failure was a 489, retried and counted against
    the endpoint, for a redirect the endpoint answered correctly.

    An ``xn--`` label is decoded as punycode alone, not by an IDNA standard's round trip: Python's
    ``idna`` codec is IDNA 2003, which reads ``xn--fa-hia`` (``faß``, as IDNA 2008, the ``idna``
    package, urllib3, requests and registries write it) as ``fass`` and refused ``faß.de`` and
    ``βόλος.com``; IDNA 2008 in turn refuses names registered before it (``💩.la``, ``xn--ls8h.la``)
    that resolvers still look up.
    """
    if not _is_name(host):
        return None
    try:
        name = _as_sent(host).removesuffix(".")
    except (idna.IDNAError, UnicodeError):
        return "a label that is not ASCII and not a valid internationalised (IDNA 2008) label"
    if len(name) > MOST_NAME_CHARACTERS:
        return f"longer than {MOST_NAME_CHARACTERS} characters"
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            return "a label that is empty or has a character other than a letter, a digit, '-' or '_'"
        if label.startswith("xn--") and not _is_punycode(label[4:]):
            return "an xn-- label that is not valid punycode"
    return None


def _as_sent(host: str) -> str:
    """``host`` as urllib3 sends it (``parse_url``): in lower case, and each label that is not ASCII
    encoded by the ``idna`` package (IDNA 2008), which requests depends on. Raises ``IDNAError``."""
    if host.isascii():
        return host.lower()
    return ".".join(
        label.lower() if label.isascii() else idna.encode(label.lower(), strict=True, std3_rules=True).decode("ascii")
        for label in host.split(".")
    )


@contextlib.contextmanager
def _followed_location(answer: requests.Response) -> Iterator[None]:
    """For the block, a redirect's ``Location`` as it is followed: a host name in Unicode
    (``http://faß.de/x``) written as urllib3 sends a name (``_as_sent``, IDNA 2008), as a browser
    follows it. requests percent-encodes every character of a ``Location`` that is not ASCII, the
    host's too (``fa%C3%9F.de``), which no resolver can be asked for: such a redirect was a 488.

    After the block the ``Location`` is the one received again: it is what a 488 shows, and what
    a redirect that is the answer carries. One this cannot read is left as it came, for
    ``_redirect_problem`` to name."""
    received = answer.headers.get("location")
    rewritten = None if received is None or not answer.is_redirect else _with_ascii_host(received)
    if received is None or rewritten is None:
        yield
        return
    answer.headers["Location"] = rewritten
    try:
        yield
    finally:
        answer.headers["Location"] = received


def _with_ascii_host(location: str) -> str | None:
    """``location`` (a header value as requests holds it: Latin-1 for UTF-8 bytes) with its host in
    ASCII, or None when its host is no name in Unicode or it cannot be read."""
    if location.isascii():
        return None
    try:
        target = location.encode("latin-1").decode("utf-8")  # as requests' get_redirect_target reads it
        netloc = urllib.parse.urlsplit(target).netloc
        userinfo, at, host_port = netloc.rpartition("@")
        host, colon, port = host_port.partition(":")
        if host.isascii() or host.startswith("["):
            return None
        ascii_netloc = f"{userinfo}{at}{_as_sent(host)}{colon}{port}"
    except (ValueError, idna.IDNAError):  # UnicodeError and urlsplit's ValueError too
        return None
    return target.replace(netloc, ascii_netloc, 1).encode("utf-8").decode("latin-1")


def _is_punycode(encoded: str) -> bool:
    """Whether ``encoded`` (an ``xn--`` label without its prefix) is punycode (RFC 3492) for a label
    with a character that is not ASCII, as every IDNA encoder writes one (``zz-`` decodes to ``zz``)."""
    try:
        return not encoded.encode("ascii").decode("punycode").isascii()
    except UnicodeError:
        return False


class _CodedBodyTooLarge(Exception):
    """More coded bytes of a body came than :func:`_bound_coded_bytes` allows."""


class _CountingDecoder:
    """urllib3's decoder of one body, counting the coded bytes it is handed; past ``most`` it raises
    :class:`_CodedBodyTooLarge` (urllib3 and requests pass it on as it is). The rest is the decoder's.

    It looks at the deadline too (:func:`stop_if_over`) before each piece: urllib3 reads on inside
    one ``read()`` until a piece decodes to something, so a flood of empty gzip members never came
    back to :func:`_joined`, which looks between the pieces it is handed, and was read until the
    timer shut the socket down, the timer waiting for the CPU beside the readers: 0.9-1.3 s past the
    deadline with 32 threads, 2-2.4 s with 64 (a review).

    urllib3's gzip decoder is replaced by :class:`_Gunzip`: given the ``max_length`` urllib3 passes
    since 2.6, urllib3 2.8's lost data at the boundaries of a body's members, and a 1 MiB body of
    1 KiB members came back as a 200 of 31,744 bytes (requests' own ``get()``: 19,456; a review)."""

    __slots__ = ("_decoder", "_left")

    def __init__(self, decoder: Any, most: int) -> None:
        self._decoder = _gunzipping(decoder, most)
        self._left = most

    def decompress(self, data: bytes, *args: Any, **kwargs: Any) -> Any:
        self._left -= len(data)
        if self._left < 0:
            raise _CodedBodyTooLarge
        stop_if_over()
        return self._decoder.decompress(data, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)


def _gunzipping(decoder: Any, most: int) -> Any:
    """``decoder`` with urllib3's gzip decoders replaced by :class:`_Gunzip`: itself, or each layer of
    a list of codings, which :class:`_Layers` then decodes in place of urllib3's ``MultiDecoder``."""
    if type(decoder) is urllib3.response.GzipDecoder:
        return _Gunzip()
    layers = getattr(decoder, "_decoders", None)
    if type(decoder) is urllib3.response.MultiDecoder and isinstance(layers, list):
        return _Layers([_Gunzip() if type(layer) is urllib3.response.GzipDecoder else layer for layer in layers], most)
    return decoder


# What a layer of a coding list is handed at a time: a piece of this size decodes to 4 MiB at most
# (zlib's most is about 1,032 to 1), which is what a layer may hold at once beyond its bound.
_LAYER_PIECE = 4 * 1024


class _Layers(urllib3.response.ContentDecoder):
    """A list of codings (``Content-Encoding: deflate, gzip``), decoded layer after layer, last applied
    first, in place of urllib3's ``MultiDecoder``: each layer is handed its input ``_LAYER_PIECE`` at a
    time, the deadline looked at before each piece (:func:`stop_if_over`), and what a piece decodes
    to goes down to the next layer at once, so that no layer's whole output is held. A layer's output
    is coded bytes for the next, held to ``most`` like the bytes on the wire; the last layer's, the
    body, to ``most`` in one call (all of it past ``max_response_size``, which is less).

    urllib3's ``MultiDecoder`` expanded a whole layer inside one call: three ``deflate`` layers, 605
    bytes on the wire, ran 158 s past a 30 s deadline holding 200 MiB; its gzip layers lost data at
    member boundaries; and a first version of this class, decoding each layer whole before the next,
    held 2 GB for a 5 KB body with no ``max_response_size``, and 544 MiB for a 590-byte ``gzip, gzip``
    body under a limit of 1 MiB (reviews, the wheel smoke test). Each call decodes all it is given (no
    ``max_length``): urllib3 keeps what it did not ask for."""

    __slots__ = ("_decoders", "_left", "_most", "_order", "_out")

    def __init__(self, layers: list[Any], most: int) -> None:
        self._decoders = layers  # named as urllib3's are, for _check_decoded_to_the_end
        self._order = layers[::-1]  # the order they are taken off in
        self._most = most
        self._left = most
        self._out = 0  # what the last layer gave in this call

    @property
    def has_unconsumed_tail(self) -> bool:
        return False

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        self._out = 0
        return bytes(self._down(data, 0))

    def flush(self) -> bytes:
        self._out = 0
        out = bytearray()
        for depth, layer in enumerate(self._order):  # what each holds back goes down through the rest
            out += self._down(self._held(layer.flush(), depth), depth + 1)
        return bytes(out)

    def _down(self, data: bytes, depth: int) -> bytearray:
        """``data`` taken off by the layer at ``depth`` and all after it."""
        if depth == len(self._order):
            return bytearray(data)
        layer, out = self._order[depth], bytearray()
        for start in range(0, len(data), _LAYER_PIECE):
            stop_if_over()
            piece = layer.decompress(data[start : start + _LAYER_PIECE])
            out += self._down(self._held(piece, depth), depth + 1)
        return out

    def _held(self, piece: bytes, depth: int) -> bytes:
        """``piece``, given by the layer at ``depth``, counted against ``most``: as coded bytes for a
        layer after it, or as the body this call gives (raises :class:`_CodedBodyTooLarge` past it)."""
        if depth < len(self._order) - 1:
            self._left -= len(piece)
            if self._left < 0:
                raise _CodedBodyTooLarge
        else:
            self._out += len(piece)
            if self._out > self._most:
                raise _CodedBodyTooLarge
        return piece


class _Gunzip(urllib3.response.ContentDecoder):
    """A gzip body's decoder, member after member (RFC 1952 allows many), each call giving at most
    ``max_length`` bytes (-1: all) and keeping the coded bytes it did not take for the next call, as
    urllib3 expects of a decoder since 2.6 (``has_unconsumed_tail``). Like urllib3's, it ignores what
    follows a complete member when that is no gzip member (padding, garbage). Its ``_obj`` and
    ``_state`` are named as urllib3's are, for :func:`_check_decoded_to_the_end`."""

    __slots__ = ("_after_first", "_ignoring", "_obj", "_tail")

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""  # coded bytes not yet decoded: the output limit came first
        self._after_first = False  # a member has ended: what is no member is ignored from then on
        self._ignoring = False

    @property
    def _state(self) -> int:
        """urllib3's GzipDecoderState: the first member, other members, or ignoring what follows."""
        return _SWALLOWING if self._ignoring else _OTHER_MEMBERS if self._after_first else _FIRST

    @property
    def has_unconsumed_tail(self) -> bool:
        return bool(self._tail)

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if self._ignoring:
            return b""
        data, self._tail = self._tail + data, b""
        out = bytearray()
        while data:
            if self._obj.eof:  # the member ended: what follows begins the next one
                # A list of codings decodes a piece whole, layer after layer, inside one call: each
                # member is where the deadline is looked at (empty members under two gzip layers ran
                # 20 s past a 0.3 s deadline with 32 threads, 41 s for 7 KB under three: a review).
                stop_if_over()
                self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._after_first = True
            room = max_length - len(out) if max_length >= 0 else 0  # 0: no limit, for zlib
            if max_length >= 0 and room <= 0:
                self._tail = data
                break
            try:
                out += self._obj.decompress(data, room)
            except zlib.error as error:
                # After a complete member, what does not start as one (NUL padding, garbage) is
                # ignored, as urllib3 does; a member begun that fails (a wrong CRC or length, bad data)
                # is refused, as Python's gzip refuses it: it was a 200 with part of the body.
                if not self._after_first or not any(words in str(error) for words in _NOT_A_MEMBER):
                    raise
                self._ignoring = True
                break
            data = self._obj.unconsumed_tail or (self._obj.unused_data if self._obj.eof else b"")
        return bytes(out)

    def flush(self) -> bytes:
        return b"" if self._ignoring else self._obj.flush()


#: The coded bytes of a body may be this many times ``max_response_size``, and _CODING_ROOM more: a
#: coding's own framing grows with its members and flushes, not with the data. 1% and 1 KiB (as it
#: was) refused bodies well under the limit: incompressible data in a gzip member per KiB at 99% of
#: it, and a server flushing its gzip stream after every small write (Z_SYNC_FLUSH: 114,708 coded
#: bytes for 16 KiB) at 25% (a review). A 30-byte gzip body holding 10 bytes is read under a limit of 20.
_CODING_TIMES = 4
_CODING_ROOM = 64 * 1024


def _bound_coded_bytes(raw: Any, limit: int | None) -> bool:
    """Hold the coded bytes of ``raw``'s body (a urllib3 response about to be read decoded) to a
    multiple of ``limit`` too (_CODING_TIMES), not only what they decode to; returns whether urllib3
    decodes the body at all (a coding the caller accepted that it has no decoder for, ``br``
    without brotli, is read as it came: then its bytes are the body the limit counts).

    A body of empty gzip members, or of empty deflate blocks, decodes to nothing: under a limit of
    1 MiB an 8 MiB body of them was a 200, read whole, and an endless one read on for 2.6-5.4 s of
    CPU until the deadline's 408 (a review). urllib3 reads on inside one ``read()`` until it has
    decoded bytes to hand over, so nothing outside it sees the coded bytes go by: its decoder
    (``_init_decoder``, ``_decoder``) is wrapped to count them. Where a release has neither, the
    decoded bytes alone are bounded, and the body taken for decoded. With no ``limit``, the decoder
    is wrapped all the same, for the rest of what :class:`_CountingDecoder` does, and counts nothing."""
    init = getattr(raw, "_init_decoder", None)
    if init is None:
        return True
    init()
    decoder = getattr(raw, "_decoder", None)
    if decoder is None:
        return False
    if not isinstance(decoder, _CountingDecoder):
        raw._decoder = _CountingDecoder(decoder, sys.maxsize if limit is None else _CODING_TIMES * limit + _CODING_ROOM)
    return True


def _bound_chunks(raw: Any, most: int) -> None:
    """Refuse a chunk of ``raw``'s chunked body that would take its data past ``most`` bytes, at the
    chunk's size line (``framing.ChunkedFraming.bound``). urllib3 reads a chunk's data whole before it
    hands any of it on, so a chunk declared above the limit was read until the body passed it: from
    a peer that declared one and sent no more, until the deadline (a 408, where a ``Content-Length``
    that large is refused at once). ``raw._fp.fp`` is the file response_head.py wrapped, when chunked."""
    framing = getattr(getattr(raw, "_fp", None), "fp", None)
    if isinstance(framing, ChunkedFraming):
        framing.bound(most)


def _joined(chunks: Iterator[bytes], limit: int | None) -> bytes | None:
    """The ``chunks`` as one ``bytes``, or None once they pass ``limit`` bytes; raises once the
    attempt is aborted or past its deadline (:func:`stop_if_over`).

    A body that comes in one piece (most do) is returned as it came; more pieces go into one buffer
    as they come: urllib3 yields a chunked body one wire chunk at a time, and a list of them held
    about 69 times the body in objects when a peer sent 2-byte chunks (138 MiB for a body of 2 MiB,
    within the limit)."""
    first = b""
    whole: bytearray | None = None
    for chunk in chunks:
        stop_if_over()  # reading what has come in is no wait the deadline's timer can end
        if whole is None:
            if not first:
                first = chunk
                if limit is not None and len(first) > limit:
                    return None
                continue
            whole = bytearray(first)
        if limit is not None and len(whole) + len(chunk) > limit:
            return None
        whole += chunk
    return first if whole is None else bytes(whole)


def _refused(
    request: Request, endpoint: str, started: float, code: int, *, what: str, detail: str, headers: dict[str, str]
) -> Response:
    """The synthetic answer for an answer the transport did not take (too large, a coding it cannot
    take off, a redirect it cannot follow), with the warning that says why."""
    logger.warning("%s %s: %s (%s; status %s)", request.method, _logged_target(endpoint, request), what, detail, code)
    return EmptyResponse(status=code, elapsed=time.monotonic() - started, headers=headers)


def _unreadable_answer(request: Request, endpoint: str, started: float, unreadable: str) -> Response:
    """The 489 for an answer whose body is in a coding this client cannot take off (``unreadable``:
    what :func:`~django_aio_request.transport.codings.unreadable_coding` names)."""
    return _refused(
        request,
        endpoint,
        started,
        status.NETWORK_ERROR,
        what="the response's body is in a coding this client cannot take off",
        detail=unreadable,
        headers={X_UNREADABLE_CODING: unreadable, h.X_DO_NOT_RETRY: "1"},
    )


def _runs_to_the_close(headers: Any, unreadable: str | None, bodiless: bool) -> bool:
    """Whether an answer in a coding this client cannot take off has a body that ends only when the
    server closes the connection (:func:`_delimited_by_the_close`: ``Transfer-Encoding: gzip``,
    ``chunked;x=1``). It is answered 489 without being read, its connection closed. Read, from a
    server that kept the connection open as servers do, it waited out the call's whole deadline: a
    408, counted against the endpoint and retried, where the 489 names the coding and says not to
    retry (a review: 6 of 6 calls, 1 s each at a 1 s deadline)."""
    return unreadable is not None and not bodiless and _delimited_by_the_close(headers)


_ZLIB_STREAM = type(zlib.decompressobj())


def _check_decoded_to_the_end(raw: Any, body: bytes | None) -> None:
    """Raise ``DecodeError`` when a gzip or deflate body ended before its compressed stream did.

    urllib3 decodes what arrives and does not look for the stream's end: a complete message whose
    gzip data was cut in half (a proxy that truncated it, a server that died mid-write with
    ``Content-Length`` set for the part it wrote) gave a 200 with half a body, which the breaker
    counted as a success. Python's gzip refuses the same bytes (``EOFError``). Looks at urllib3's
    decoder objects (``_decoder``, ``_decoders``, ``_obj``, ``_state``): where a release has none, it
    says nothing.
    """
    if body is None or not _body_was_read(raw):  # too large (decided already), or no byte read
        return
    decoder = getattr(raw, "_decoder", None)
    parts = getattr(decoder, "_decoders", None) or ([decoder] if decoder is not None else [])
    for part in parts:
        stream = getattr(part, "_obj", None)
        if not isinstance(stream, _ZLIB_STREAM) or stream.eof:
            continue
        state = getattr(part, "_state", _FIRST)  # a deflate decoder has none: one stream, no members
        if state == _FIRST or (state == _OTHER_MEMBERS and _member_begun(stream)):
            raise DecodeError("the compressed body ended before its compressed stream did")


_FIRST = 0  # urllib3's GzipDecoderState.FIRST_MEMBER
_OTHER_MEMBERS = 1  # GzipDecoderState.OTHER_MEMBERS: a member complete, urllib3 decodes what follows
_SWALLOWING = 2  # GzipDecoderState.SWALLOW_DATA: what followed a member was no member, and is ignored
#: zlib's words when what follows a gzip member does not start as one: not gzip's magic number
#: (``1f 8b``), a compression method other than deflate (8), reserved flags set.
_NOT_A_MEMBER = ("incorrect header check", "unknown compression method", "unknown header flags set")


def _member_begun(stream: Any) -> bool:
    """Whether ``stream``, the decompressor urllib3 handed what followed a complete gzip member, was
    handed the start of another member: gzip's magic number at least, maybe its whole header and
    data. A gzip body may have several members (``cat a.gz b.gz``, pigz, bgzip), and one cut short
    in its second was a 200 with part of the body, a success; Python's gzip says ``EOFError``.

    What follows a member and is no member is trailing garbage, which urllib3 and other clients
    accept (NUL padding, a newline): once zlib refuses it (from two bytes on), urllib3 stops
    decoding and does not consult this decoder; a single byte, whatever it is, or a header begun
    wrong whose next byte zlib waits for (``1f 8b 09``), is still pending here. A copy is handed
    one more byte, ``08``: after a single byte it makes no magic number (a lone byte is no member,
    whatever it is), and anywhere later in a header it is valid (deflate's method number, a flag),
    so zlib refuses the header only if what came was none. zlib's messages are matched: it has no
    other way to say so, and they have been the same since zlib 1.2 (2003), and in zlib-ng.
    """
    probe = stream.copy()
    try:
        probe.decompress(b"\x08")
    except zlib.error as error:
        return not any(words in str(error) for words in _NOT_A_MEMBER)
    return True


def _body_was_read(raw: Any) -> bool:
    """Whether any byte of body reached ``raw``'s decoder: an empty body (a 204's, a HEAD's answer,
    ``Content-Length: 0``) names a coding and has no stream to end.

    ``tell()`` counts the bytes of a body framed by ``Content-Length`` or by the connection's close,
    but urllib3's ``read_chunked`` reads past that counter: it is 0 for every chunked body, and a
    gzip body cut in half, sent chunked as servers send what they compress on the fly, was a 200
    with half the body. For a chunked body, urllib3's ``_has_decoded_content``, set once the
    decoder was handed a chunk (``read_chunked`` hands it only chunks that have bytes), says it.
    """
    if getattr(raw, "chunked", False):
        return bool(getattr(raw, "_has_decoded_content", False))
    return bool(raw.tell())


_transports: "weakref.WeakSet[RequestsTransport]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for transport in list(_transports):
        transport._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _let_go(error: BaseException) -> None:
    """Clear the frames of ``error``'s tracebacks, and of the exceptions it chains or wraps.

    urllib3 keeps the exception it is handling in a local of the frame it raises it from
    (``urlopen``'s ``new_e``), so an exception caught here sits in a reference cycle with its own
    traceback, whose frames reach up to the caller's through ``f_back``: the request, the call's
    responses (their bodies) and its hedging state, about 230 objects an aborted attempt, stayed
    alive until the garbage collector ran. Cleared, they go when the call returns.
    """
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if item.__traceback__ is not None:
            traceback.clear_frames(item.__traceback__)  # skips the frames still running (this one's caller)
        pending += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]


_Wrapped = TypeVar("_Wrapped", bound=BaseException)


# What requests, urllib3 and the standard library raise for the network and for what a peer sent
# (requests' exceptions and the socket's are OSErrors). Anything else, an AttributeError or a
# KeyError, may as well be a bug of code the call ran: an adapter of the application's own class, a
# callback ``responses`` runs in a test.
_HTTP_AND_NETWORK_ERRORS = (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException)


def _raised_in(error: BaseException) -> str:
    """Where ``error`` was raised: the module, line and function of its innermost frame. The
    transport cannot tell a bug of an adapter of the application's own from that adapter's (or a
    library's) reaction to what the peer sent, and takes either for a failure of the attempt (a
    489); named so, the bug is found in the log. Never what the error says: it may carry the URL,
    credentials among it (:func:`_what_failed`)."""
    tb = innermost(error)
    if tb is None:
        return "an unknown place"
    code = tb.tb_frame.f_code
    return f"{tb.tb_frame.f_globals.get('__name__', '?')}, line {tb.tb_lineno}, in {code.co_name}"


def _what_failed(error: BaseException) -> str:
    """The log's name for a failed attempt: the class of what was raised, and what it wraps down to
    the cause, with an operating system error's own words (``MaxRetryError > NewConnectionError:
    Connection refused``). Class names and ``strerror`` only: what the exceptions say of themselves
    carries the URL (credentials and query among it). The class alone, ``MaxRetryError``, said
    nothing of a name that did not resolve or a refused connection, even at DEBUG (a review)."""
    names: list[str] = []
    reason = ""
    item: object = error
    seen: set[int] = set()
    while isinstance(item, BaseException) and id(item) not in seen and len(names) < 6:
        seen.add(id(item))
        names.append(type(item).__name__)
        if isinstance(item, OSError) and isinstance(item.strerror, str) and item.strerror:
            reason = item.strerror[:200]  # the system's words: short, but not bounded by anything here
        try:  # a property of an exception class of someone else's: it must not fail the call
            inner = getattr(item, "reason", None)
        except Exception:
            inner = None
        if not isinstance(inner, BaseException):
            inner = item.__cause__ or next((a for a in item.args if isinstance(a, BaseException)), None)
        item = inner
    shown = " > ".join(dict.fromkeys(names))
    return f"{shown}: {reason}" if reason else shown


def _wrapped(error: BaseException, kind: type[_Wrapped]) -> _Wrapped | None:
    """The exception of ``kind`` that ``error`` wraps, however deep (urllib3's ``ProtocolError``
    holds it in its arguments, requests' ``ConnectionError`` holds that), or None."""
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        item = pending.pop()
        if isinstance(item, kind):
            return item
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        pending += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return None


#: Methods whose request may be sent twice with the effect of once (RFC 9110 9.2.2): what RFC 9112
#: (9.3.1) lets a client send again by itself when its connection closed first, as aiohttp does.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _may_send_again(error: Exception, request: Request, guard: AttemptSockets) -> bool:
    """Whether the attempt that raised ``error`` may go once more, on a fresh connection: the server
    closed the kept-alive connection its request went out on before answering anything
    (:class:`StaleConnection`), or bytes of an earlier answer came on it first (:class:`OutOfStep`),
    the method is idempotent, this was the attempt's first try, and it was not aborted. A POST may
    have been read and acted on: its 489 stands (docs/faults.md)."""
    return (
        not guard.fresh
        and guard.reason is None
        and request.method.upper() in _IDEMPOTENT
        and _wrapped(error, StaleConnection) is not None
    )


def _stale_what(stale: StaleConnection | None) -> str:
    """What happened on the kept-alive connection, for the log (never the peer's bytes)."""
    if isinstance(stale, OutOfStep):
        return "what came first on the kept-alive connection was no status line (the rest of an earlier answer)"
    return "the server closed the kept-alive connection before answering"


def _time_to_send_again(guard: AttemptSockets) -> bool:
    """Whether the attempt has time left to be sent again: as much as any attempt of the client is
    sent with (its LOW_TIMEOUT_THRESHOLD). With less, a review's requests went out again carrying
    ``X-Request-Timeout: 0.000``, which a server running this app answers 408 at once."""
    return not too_little_to_send(guard.remaining())


def _is_timeout(error: Exception) -> bool:
    """Whether ``error`` is a socket timeout: requests' ``Timeout``, requests' ``ConnectionError``
    around urllib3's ``ReadTimeoutError`` (a timeout while reading the body), or urllib3's own
    (the direct route raises urllib3's exceptions unwrapped). A refused connection is urllib3's
    ``NewConnectionError``, a subclass of its connect timeout: it is no timeout. The socket's own
    (Python's ``TimeoutError``) is one, also inside urllib3's ``ProtocolError("Connection aborted.",
    ...)``, as which a send the socket timeout (the time left) ended before the deadline's timer
    fired is raised: that was a 489, retried and counted against the endpoint (once in CI, under load)."""
    # Through the wrappers, as deep as they go: through a proxy a connect timeout comes as requests'
    # ProxyError around MaxRetryError around urllib3's ProxyError around the ConnectTimeoutError.
    for _ in range(_MAX_WRAPPERS):
        if isinstance(error, requests.Timeout | TimeoutError):
            return True
        if isinstance(error, Urllib3TimeoutError):
            return not isinstance(error, NewConnectionError)
        inner = getattr(error, "reason", None) if isinstance(error, MaxRetryError) else None
        inner = inner or getattr(error, "original_error", None)  # urllib3's ProxyError
        if inner is None and isinstance(error, ProtocolError):  # ("Connection aborted.", the error)
            inner = next((arg for arg in error.args if isinstance(arg, Exception)), None)
        if inner is None and isinstance(error, requests.RequestException) and error.args:
            inner = error.args[0]
        if not isinstance(inner, Exception):
            return False
        error = inner
    return False


_MAX_WRAPPERS = 8


def _bodiless(method: str, status_code: int) -> bool:
    """Whether an answer has no body by definition (RFC 9112 6.3): one to a HEAD request, an
    interim (1xx), a 204 or a 304. Its Content-Length, if any, is that of the resource (a HEAD's
    answer, a 304's representation), and http.client reads no body for it whatever it says."""
    return method.upper() == "HEAD" or status_code < 200 or status_code in (204, 304)


def _declared_length(value: str) -> int:
    """A response's Content-Length as a number, the largest of a list's (``N, N``, or two fields of
    ``N``, which the headers join; a list of different numbers was refused with its head); 0 when
    none is a plain ASCII number. A list counted as 0 (as it was) read a body announced far above
    ``max_response_size`` until the deadline, where the same number alone was refused at once (a
    review)."""
    if "," not in value:  # one number: every answer of a call comes here
        return _length(value)
    return max(map(_length, length_elements(value)), default=0)


def _length(number: str) -> int:
    """``number`` as a length, 0 when it is no plain ASCII number (absent, empty, or junk: urllib3
    refused or ignored it already).

    ``str.isdigit()`` accepts superscripts such as ``"²"`` that ``int()`` refuses, and ``int()``
    refuses more than 4,300 digits: neither may decide on a peer's header. A number longer than
    ``_MAX_LENGTH_DIGITS`` digits is larger than any limit, and is not converted."""
    if not (number.isascii() and number.isdigit()):
        return 0
    digits = number.lstrip("0")
    return int(digits or "0") if len(digits) <= _MAX_LENGTH_DIGITS else 2**63


#: Where a redirect's ``Location`` waits while requests' ``Session.send`` ends (``_hide_location``).
_HIDDEN_LOCATION = "_aio_request_hidden_location"


def _hide_location(answer: requests.Response) -> None:
    """Take a redirect's ``Location`` out of ``answer`` until :func:`_show_location` puts it back.

    ``Session.send(allow_redirects=False)`` works out the next hop of every redirect it receives
    (``Response.next``) through ``resolve_redirects``, which reads the redirect's whole body first,
    decoded and without a limit: every hop after the first, and the first too when the call took
    requests' path (a proxy, ``session.auth``), put a gzip bomb of a redirect's body into memory
    (200 KB on the wire, 200 MiB read), and a redirect that was the answer (``allow_redirects``
    off) was read past ``max_response_size``. Without its ``Location`` an answer is no redirect to
    requests, which then reads nothing; this transport follows redirects itself, hop by hop, and
    reads their bodies with :func:`_drop_body`, the answer's with the limit."""
    if answer.status_code in REDIRECT_STATI:
        location = answer.headers.pop("location", None)
        if location is not None:
            setattr(answer, _HIDDEN_LOCATION, location)


def _show_location(*answers: requests.Response) -> None:
    for answer in answers:
        location = answer.__dict__.pop(_HIDDEN_LOCATION, None)
        if location is not None:
            answer.headers["Location"] = location


def _delimited_by_the_close(headers: Any) -> bool:
    """Whether an answer's body ends only when the server closes the connection (RFC 9112 6.3): a
    ``Transfer-Encoding`` that is not chunked, or neither that nor a ``Content-Length``."""
    value = headers.get("Transfer-Encoding")
    if value is not None:
        return not is_chunked(value)
    return headers.get("Content-Length") is None


def _drop_body(redirect: requests.Response) -> None:
    """Read the body of a ``redirect`` before requests follows it, as bytes on the wire.

    requests' ``resolve_redirects`` reads a redirect's whole body to free its connection, decoded
    and without a limit: a 302 with a 300 MB body, or a gzip bomb, went into memory whatever
    ``max_response_size`` said. Up to :data:`REDIRECT_BODY_READ` bytes are read here, undecoded;
    past that the connection is closed rather than read to its end, and so it is at once when the
    body says it is longer (its ``Content-Length``, or a chunk's size line): from a server that
    then sent nothing more, reading waited out the deadline (a review). Either way requests then
    finds the body consumed. Reads are on the attempt's sockets: the deadline bounds them.
    """
    raw = redirect.raw
    left = REDIRECT_BODY_READ + 1  # one more byte: a body of exactly the limit is read to its end
    if raw is None:  # made in memory by an adapter of the application's: nothing on the wire
        return
    try:
        headers, method = redirect.headers, getattr(redirect.request, "method", None) or ""
        longer = _declared_length(headers.get("Content-Length", "")) >= left and not _bodiless(
            method, redirect.status_code
        )
        if longer or _delimited_by_the_close(headers):
            # Its end is the connection's close, which a server keeping the connection open never
            # sends: read, it waited out the deadline (a 302 with Transfer-Encoding: gzip, a review).
            # Such a connection cannot go back to the pool anyway; nor can one whose body is longer.
            raw.close()
            return
        _bound_chunks(raw, REDIRECT_BODY_READ)
        while left > 0:
            try:
                chunk = raw.read(min(left, _CHUNK_SIZE), decode_content=False)
            except Exception as error:
                if _wrapped(error, ChunkAboveLimit) is None:
                    raise
                break  # a chunk that makes it longer: not read
            if not chunk:
                return  # read to its end: the connection goes back to the pool
            left -= len(chunk)
        raw.close()  # longer: closed, never pooled with the rest of the body unread
    finally:
        redirect._content = b""
        redirect._content_consumed = True  # type: ignore[attr-defined]

"""Hard deadlines for blocking ``requests`` calls: shutting down the attempt's sockets.

``requests``' ``timeout=`` bounds each wait on the socket, not the call, so a server that trickles
bytes can hold a caller for ever. Closing the socket from another thread does not wake a blocked
reader; ``shutdown(SHUT_RDWR)`` does, at once. To reach the sockets, the transport installs
connection classes (below) that register each socket with the :class:`AttemptSockets` of the attempt
running in the current thread, and a pool that unregisters a connection before it goes back to
the pool, so a late abort can never hit a connection that another call has picked up since.
"""

import contextlib
import http.client
import ipaddress
import select
import socket
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util import SKIP_HEADER
from urllib3.util.connection import allowed_gai_family

from django_aio_request.core import status
from django_aio_request.core.deadline import too_little_to_send
from django_aio_request.core.timeout_header import restamp
from django_aio_request.transport.bounded_resolver import ResolutionUnfinished, resolver
from django_aio_request.transport.connection_drainer import drainer
from django_aio_request.transport.dropped_pools import RetiringPoolMixin
from django_aio_request.transport.pool_slots import put_empty_slot_at_bottom
from django_aio_request.transport.releasable_socket import CAN_RELEASE, Arm, ReleasableSocket
from django_aio_request.transport.response_head import FinalResponse, HeadTooLarge, NothingReceived

_local = threading.local()
# http.client's own checks of a header line, for putheader()'s short path (_GuardedConnectionMixin);
# on a Python without them every header goes down http.client's own path.
_REQUEST_STARTED = getattr(http.client, "_CS_REQ_STARTED", None)
_legal_header_name = getattr(http.client, "_is_legal_header_name", None)
_illegal_header_value = getattr(http.client, "_is_illegal_header_value", None)
_SHORT_HEADER_PATH = None not in (_REQUEST_STARTED, _legal_header_name, _illegal_header_value) and (
    "_HTTPConnection__state" in vars(http.client.HTTPConnection("localhost"))  # where putheader() reads its state
)
_CAN_POLL = hasattr(select, "poll")  # not on Windows: there answer_arrived() says False (unknown)


class AttemptSockets:
    """The sockets of one attempt, and why it was aborted (None while it was not)."""

    __slots__ = (
        "_closed",
        "_lock",
        "_owned",
        "_returned",
        "_sent",
        "_sockets",
        "_wakers",
        "deadline",
        "fresh",
        "handed_over",
        "reached",
        "reason",
        "release_after",
    )

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.reason: int | None = None
        self._lock = threading.Lock()
        self._sockets: dict[int, socket.socket] = {}
        self._owned: set[int] = set()
        self._wakers: set[threading.Event] = set()
        self._closed = False
        self._sent = False  # the request went out on the socket registered last
        self._returned = False  # and its connection went back to the pool: its answer was read
        self.fresh = False  # take no kept-alive connection from the pool (see StaleConnection)
        # A request of the attempt began to go out on a connection: the server may have it. False, it
        # never had one (core/response.py: UnreachedResponse).
        self.reached = False
        # When a stop may give the connection away rather than shut it (releasable_socket.py): None,
        # never; else the time before which nothing can stop the attempt (its call's first hedge).
        self.release_after: float | None = None
        self.handed_over = False  # the attempt's connection went to the drainer; its slot not yet given back

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def abort(self, reason: int, *, release: bool = True) -> None:
        """Stop the attempt: wake whatever read or write it is blocked in. ``reason`` is a status.

        ``release``: a cancelled read that is armed may give its connection to the drainer (a lost
        hedge); False shuts it down whatever its state (the whole call was stopped)."""
        with self._lock:
            if self._closed or self.reason is not None:
                return
            self.reason = reason
            for sock in self._sockets.values():
                if release and reason == status.CANCELLED and _released(sock):
                    continue  # its reader gives the connection to the drainer (hand_over)
                _shutdown(sock)
            for event in self._wakers:
                event.set()

    def answer_arrived(self) -> bool:
        """Whether bytes wait unread on the attempt's connection after its request went out.

        Then the answer (or the connection's end) has reached this process and only this process is
        late reading it: a hedge sent now would add work and win nothing. A look, not a wait
        (``poll`` with no timeout). Plain HTTP only: on a TLS connection the bytes waiting may be
        the server's session tickets rather than its answer, so there it says False (unknown), as
        for any socket-like object that is not a plain socket (urllib3's TLS-in-TLS ``SSLTransport``
        through an HTTPS proxy, pyOpenSSL's wrapper).
        """
        with self._lock:
            if not self._sent or self._closed or self.reason is not None or not self._sockets or not _CAN_POLL:
                return False
            poller = select.poll()
            for sock in self._sockets.values():
                if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
                    return False
                fd = sock.fileno()
                if fd < 0:
                    continue  # closed: a stale kept-alive connection the request was sent again from
                poller.register(fd, select.POLLIN)
            try:
                return bool(poller.poll(0))
            except OSError:
                return False

    def answer_in_hand(self) -> bool:
        """Whether the answer to the request sent last has reached this process: read (its connection
        handed back to the pool) or waiting unread (:meth:`answer_arrived`). What a hedge asks before
        it goes: between the answer read and the attempt's end (the transport's cleanup, the Response
        made), :meth:`answer_arrived` says False, and hedges went for 1% of calls whose answer the
        caller had (4 threads, a hedge due at 1.5 ms)."""
        return self._returned or self.answer_arrived()

    def arm(self, conn: Any) -> None:
        """Make the read of ``conn``'s answer releasable (see releasable_socket.py): a plain
        connection, straight to the server, of a pool the drainer can give it back to."""
        sock = conn.sock
        if type(sock) is ReleasableSocket and conn.proxy is None and getattr(conn, "_aio_request_pool", None):
            sock.arm = Arm(self, conn)

    def handing_over(self) -> bool:
        """Whether a stop released a read of the attempt that has not yet begun: that read gives the
        connection to the drainer, where stopping the attempt before it (stop_if_over) closed it, and
        its server's answer went to a closed connection (3 of about 190 releases, a review)."""
        with self._lock:
            return any(getattr(getattr(sock, "arm", None), "released", False) for sock in self._sockets.values())

    def hand_over(self, conn: Any, sock: ReleasableSocket) -> None:
        """(On the attempt's thread, its read released.) Give the connection to the drainer.

        The drainer gets the descriptor in a socket object of its own: this one is still referred to
        by the answer's reader (``makefile``), and closing it would wait for that reader to go (the
        garbage collector, at worst). Detached, it closes nothing when that reader goes."""
        with self._lock:
            self._forget(conn)
        conn.sock = None  # urllib3 closes the connection on the way out: nothing left to close
        self.handed_over = True  # and gives its slot back: at the bottom (_DrainingPoolMixin)
        family, kind, proto = sock.family, sock.type, sock.proto
        timeout = sock.gettimeout()
        taken = ReleasableSocket(family, kind, proto, fileno=sock.detach())
        taken.settimeout(timeout)
        drainer.take(taken, conn._aio_request_pool, conn._method or "GET", self.deadline)

    def next_request(self) -> None:
        """The attempt takes a connection for its next request (a redirect's next hop, an auth's
        resend): the answer read before is not the one it waits for now. (Cleared only once the new
        connection was registered, it held a hedge back through the redirect target's name lookup.)"""
        self._returned = False

    def sent(self) -> None:
        """The request went out in full on the socket registered last (see :meth:`answer_arrived`)."""
        with self._lock:
            self._sent = True

    def wait(self, event: threading.Event, most: float | None = None) -> None:
        """Block until ``event`` is set, the deadline passes or the attempt is aborted (or ``most``
        seconds have passed)."""
        with self._lock:
            if self.reason is not None:
                return
            self._wakers.add(event)
        try:
            left = self.remaining()
            event.wait(max(0.0, left if most is None else min(left, most)))
        finally:
            with self._lock:
                self._wakers.discard(event)

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less: until the deadline passes or the attempt is aborted."""
        if seconds > 0:
            self.wait(threading.Event(), seconds)

    def attach(self, conn: Any, sock: socket.socket | None, *, owned: bool = False) -> None:
        """Register the socket ``conn`` now uses (replacing its previous one).

        ``owned``: the guard holds its own duplicate of the socket and closes it when done with it.
        """
        if sock is None:
            return
        with self._lock:
            if self._closed:
                if owned:
                    sock.close()
                return
            self._forget(conn)
            self._sockets[id(conn)] = sock
            self._sent = self._returned = False
            if owned:
                self._owned.add(id(conn))
            conn._aio_request_guard = self
            if self.reason is not None:
                _shutdown(sock)

    def detach(self, conn: Any, *, returned: bool = False) -> bool:
        """Unregister ``conn``: later aborts leave it alone. Whether the attempt was aborted (its
        socket shut down) by then. ``returned``: it goes back to the pool, done with its answer."""
        with self._lock:
            if returned and self._sent and self.reason is None and id(conn) in self._sockets:
                self._returned = True
            self._forget(conn)
            conn._aio_request_guard = None
            return self.reason is not None

    def close(self) -> None:
        """The attempt is over: later aborts do nothing."""
        with self._lock:
            self._closed = True
            for key in self._owned:
                self._sockets[key].close()
            for sock in self._sockets.values():
                if type(sock) is ReleasableSocket:
                    sock.arm = None
            self._owned.clear()
            self._sockets.clear()

    def _forget(self, conn: Any) -> None:
        sock = self._sockets.pop(id(conn), None)
        if type(sock) is ReleasableSocket:
            sock.arm = None  # it held the connection: a cycle through the socket
        if sock is not None and id(conn) in self._owned:
            self._owned.discard(id(conn))
            sock.close()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this the guard of connections used by the current thread inside the block."""
        previous = getattr(_local, "guard", None)
        _local.guard = self
        try:
            yield
        finally:
            _local.guard = previous


def _shutdown(sock: Any) -> None:
    # Through an https:// proxy, urllib3's connection holds an SSLTransport (the request's TLS inside
    # the TLS to the proxy): no socket and no shutdown(). It wraps the socket to the proxy, which is
    # the one to shut: before, the abort raised AttributeError and no attempt through such a proxy
    # ended at its deadline, at a winning hedge or at a cancel (tests/transport/test_tls_proxy.py).
    while not isinstance(sock, socket.socket) and getattr(sock, "socket", None) is not None:
        sock = sock.socket
    with contextlib.suppress(OSError):  # already closed or never connected: nothing left to wake
        sock.shutdown(socket.SHUT_RDWR)


def _released(sock: Any) -> bool:
    """(Holding the attempt's lock.) Whether ``sock``'s read was released rather than shut down."""
    arm = getattr(sock, "arm", None)
    return arm is not None and drainer.has_room() and arm.release()


def _current() -> AttemptSockets | None:
    return getattr(_local, "guard", None)


def current_attempt() -> AttemptSockets | None:
    """The guard of the attempt running in this thread, or None outside one."""
    return _current()


def stop_if_over() -> None:
    """Raise ``ConnectionAbortedError`` if the current thread's attempt was aborted or its deadline
    has passed (then aborted here): called between the pieces of an answer read.

    The deadline's timer wakes a read blocked on the socket; it cannot stop a thread parsing what a
    peer has already sent. Against a peer flooding 1-byte chunks or endless interim responses, the
    parsing went on 25-65 ms past the abort over what was already received, and the timer thread,
    waiting for the CPU beside it, fired up to 125 ms late: 7 of 70 calls ended more than 0.25 s past
    their deadline (1.4 s once). A body read with no size limit was then joined into one piece, to be
    thrown away: 0.25-1.1 s past the deadline for a few hundred MB.
    """
    guard = _current()
    if guard is None:
        return
    if guard.reason is None:
        if time.monotonic() < guard.deadline:
            return
        guard.abort(status.TIMEOUT)
    raise ConnectionAbortedError("the attempt was aborted while its answer was read")


def connect_failure(conn: HTTPConnection, error: OSError) -> ConnectTimeoutError | NewConnectionError:
    """urllib3's error for a connection that could not be made, as its own ``_new_conn`` words it:
    ``ConnectTimeoutError`` for a timeout, ``NewConnectionError`` for any other failure."""
    if isinstance(error, TimeoutError):
        return ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})")
    return NewConnectionError(conn, f"Failed to establish a new connection: {error}")


def _is_name(host: str) -> bool:
    """Whether connecting to ``host`` needs a lookup: it is not an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return False


class StaleConnection(http.client.RemoteDisconnected):
    """A kept-alive connection ended before any byte of the answer to a request sent on it.

    The race every client of a keep-alive server meets: the server closes a connection it has held
    idle (gunicorn's gthread worker after its 2 s ``keepalive``, without looking whether a request
    has arrived meanwhile) just as this client sends the next request on it. The request may or may
    not have been read: the transport sends it again on a fresh connection only when its method is
    idempotent (requests_transport.py), as aiohttp and RFC 9112 (9.3.1) do.
    """


class OutOfStep(StaleConnection):
    """What came first on a kept-alive connection was no status line: the rest of an earlier answer
    the server sent past its framing (more than its ``Content-Length`` said, sent late), not this
    request's answer. The server may have read the request, as with any stale connection: an
    idempotent one goes again on a fresh connection. (An answer to ``HEAD`` that announces a body,
    which gunicorn 23.0 sends after all, keeps no connection: response_head.py.)
    """


class NoTimeToSend(Exception):
    """Connected, with less time left than any attempt of the client is sent with (its
    ``LOW_TIMEOUT_THRESHOLD``, none at all outside a client): nothing is written on the connection.
    A connection that took the rest of the time (a SYN retransmitted after 1 s) sent requests
    stamped ``X-Request-Timeout: 0.000`` to a peer that then did the work for a caller that had
    given up (a review). ``fresh``: the connection was made for this request, so the time went in
    connecting, which says something of the endpoint (requests_transport.py ``_failure``)."""

    def __init__(self, left: float, *, fresh: bool) -> None:
        super().__init__(f"{max(left, 0.0):.6f} s left once connected")
        self.fresh = fresh


class _GuardedConnectionMixin:
    sock: socket.socket | None
    timeout: Any
    host: str
    port: int
    _dns_host: str
    _aio_request_requests = 0  # requests sent on this connection since it connected
    _aio_request_reused = False  # the last one went on a connection that had carried one before

    def connect(self) -> None:
        self._aio_request_requests = 0
        guard = _current()
        # Made for an attempt being sent again on a fresh connection: that attempt may use it again
        # (an auth's resend of the challenge's answer), see _FreshWhenAskedMixin.
        self._aio_request_fresh_for = guard if guard is not None and guard.fresh else None
        if guard is not None:
            remaining = guard.remaining()
            if remaining <= 0:
                raise ConnectTimeoutError(self, "the deadline passed before connecting")
            if not isinstance(self.timeout, int | float) or self.timeout > remaining:
                self.timeout = remaining
        super().connect()  # type: ignore[misc]
        if guard is not None:
            guard.attach(self, self.sock)  # for TLS, the wrapped socket replaces the plain one

    def _new_conn(self) -> socket.socket:
        guard = _current()
        if guard is None:
            plain: socket.socket = super()._new_conn()  # type: ignore[misc]
            return plain
        return self._connect_resolved(guard) if _is_name(self._dns_host) else self._connect_registered(guard)

    def _connect_registered(self, guard: AttemptSockets) -> socket.socket:
        """urllib3's ``_new_conn`` to an address (not a name), with each socket registered with the
        attempt *before* ``connect()``.

        Registered only once connected, an attempt whose SYN was dropped (a full accept queue, a
        lost packet) could not be aborted: the caller whose hedge had won at 50 ms waited for the
        kernel's retransmission (about 1 s), a cancelled async call's thread until the deadline. On
        Linux ``shutdown()`` ends a ``connect()`` in progress at once. Wrapping the socket for TLS
        detaches this socket object, so the guard keeps a duplicate of the descriptor (shutdown acts
        on the socket, whichever descriptor names it) until ``connect()`` registers the wrapped
        socket in its place.
        """
        conn = cast(HTTPConnection, self)
        host = self._dns_host.strip("[]")
        try:
            error: OSError = OSError("getaddrinfo returns an empty list")
            for family, kind, proto, _, address in socket.getaddrinfo(
                host, self.port, allowed_gai_family(), socket.SOCK_STREAM
            ):
                sock = (ReleasableSocket if CAN_RELEASE else socket.socket)(family, kind, proto)
                try:
                    for option in conn.socket_options or ():
                        sock.setsockopt(*option)
                    if isinstance(self.timeout, int | float):
                        sock.settimeout(self.timeout)
                    if conn.source_address:
                        sock.bind(conn.source_address)
                    guard.attach(self, sock.dup(), owned=True)
                    if guard.reason is None:
                        sock.connect(address)
                    if guard.reason is not None:  # aborted before connect() began, which then missed the shutdown
                        raise ConnectionAbortedError("the attempt was aborted while connecting")
                except OSError as failed:
                    sock.close()
                    guard.detach(self)
                    error = failed
                    continue
                sys.audit("http.client.connect", self, self.host, self.port)
                return sock
            raise error
        except socket.gaierror as failed:
            raise NameResolutionError(self.host, conn, failed) from failed
        except OSError as failed:
            raise connect_failure(conn, failed) from failed

    def _connect_resolved(self, guard: AttemptSockets) -> socket.socket:
        """Resolve the host within the deadline (see resolver.py), then try its addresses in turn."""
        name: str = self._dns_host
        conn = cast(HTTPConnection, self)
        try:
            name.encode("idna")
        except UnicodeError:
            raise LocationParseError(f"'{name}', label empty or too long") from None
        try:
            addresses = resolver.resolve(name, allowed_gai_family(), guard)
        except ResolutionUnfinished as error:
            raise ConnectTimeoutError(self, f"resolving {name} did not finish before the deadline") from error
        except socket.gaierror as error:
            raise NameResolutionError(self.host, conn, error) from error
        except OSError as error:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error
        failure: Exception = NewConnectionError(conn, f"Failed to establish a new connection: no address for {name}")
        try:
            for address in addresses:  # urllib3's own loop, with an address instead of the name
                remaining = guard.remaining()
                if remaining <= 0:
                    raise ConnectTimeoutError(self, "the deadline passed before connecting")
                if not isinstance(self.timeout, int | float) or self.timeout > remaining:
                    self.timeout = remaining
                self._dns_host = address
                try:
                    return self._connect_registered(guard)
                except (NewConnectionError, ConnectTimeoutError) as error:
                    failure = error
        finally:
            self._dns_host = name
        raise failure

    def _tunnel(self) -> None:
        """The proxy's answer to ``CONNECT``. When the deadline's abort shuts the socket while it
        trickles, ``http.client`` reads the end of the stream as the end of the answer and takes the
        tunnel for open: urllib3 went on to load the CA bundle and start TLS past the deadline
        (30-340 ms late). Stop there instead."""
        super()._tunnel()  # type: ignore[misc]
        guard = _current()
        if guard is not None and guard.reason is not None:
            raise ConnectionAbortedError("the attempt was aborted while the proxy answered CONNECT")

    def putheader(self, header: Any, *values: Any) -> None:
        """One header line of the request, as urllib3's and ``http.client``'s ``putheader`` write it,
        in fewer steps for the common case: one ``str`` value for a ``str`` name. Checked the same way
        (the name a legal one, the value without a bare line break, both encodable: the same errors),
        but without the list, the loop and urllib3's look for its ``SKIP_HEADER`` marker, which is sent
        down their path. Six headers a request cost 8.4 µs there against 3.8 µs here, in a loop
        (docs/benchmarks.md); raw ``requests`` pays the 8.4 µs."""
        if (
            not _SHORT_HEADER_PATH
            or len(values) != 1
            or not isinstance(header, str)
            or not isinstance(value := values[0], str)
            or value == SKIP_HEADER
        ):
            super().putheader(header, *values)  # type: ignore[misc]
            return
        if self._HTTPConnection__state != _REQUEST_STARTED:  # type: ignore[attr-defined]
            raise http.client.CannotSendHeader()
        name = header.encode("ascii")
        if not _legal_header_name(name):  # type: ignore[misc]
            raise ValueError(f"Invalid header name {name!r}")
        line = value.encode("latin-1")
        if _illegal_header_value(line):  # type: ignore[misc]
            raise ValueError(f"Invalid header value {line!r}")
        self._buffer.append(name + b": " + line)  # type: ignore[attr-defined]

    def request(self, *args: Any, **kwargs: Any) -> None:
        """Send the request; its ``X-Request-Timeout``, if the pipeline stamped it, is the time left
        now: after the attempt's wait for a connection slot and for this connection.

        A new plain-HTTP connection is made here, before the head is written, rather than by
        ``http.client`` once the head is buffered (urllib3 connects an HTTPS one before this call).
        """
        guard = _current()
        if guard is not None:
            fresh = self.sock is None
            if fresh:
                self.connect()  # registers its socket with the guard
            else:
                guard.attach(self, self.sock)
            left = guard.remaining()
            if too_little_to_send(left):
                raise NoTimeToSend(left, fresh=fresh)
            headers = kwargs.get("headers", args[3] if len(args) > 3 else None)
            if headers is not None:
                restamp(headers, left)
        self._aio_request_reused = self._aio_request_requests > 0
        self._aio_request_requests += 1
        if guard is not None:
            guard.reached = True  # connected (and through TLS): the request goes out now
        super().request(*args, **kwargs)  # type: ignore[misc]
        if guard is not None:
            guard.sent()
            if guard.release_after is not None:
                guard.arm(self)

    def getresponse(self) -> Any:
        try:
            return super().getresponse()  # type: ignore[misc]
        except NothingReceived as error:
            if not self._aio_request_reused:
                raise
            raise StaleConnection(f"a kept-alive connection ended before any answer: {error}") from error
        except (http.client.BadStatusLine, HeadTooLarge) as error:
            if not (self._aio_request_reused and getattr(error, "first_line", False)):
                raise  # on a new connection: the server's own answer, malformed or too large (a 489)
            what = type(error).__name__
        # Raised here, out of the handler, so that it carries no HeadTooLarge as its context: that one
        # is the endpoint's answer, not retried (requests_transport.py), and this is not its answer.
        raise OutOfStep(f"what came first on a kept-alive connection was no status line ({what})")


class _GuardedResponse(FinalResponse):
    def _before_status_line(self) -> None:
        guard = _current()
        if guard is not None and guard.reason == status.CANCELLED and guard.handing_over():
            return  # released before its read began: the read hands the connection over (releasable_socket.py)
        stop_if_over()  # an endless stream of interim responses ends at the deadline


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    response_class = _GuardedResponse


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    response_class = _GuardedResponse


class _FreshWhenAskedMixin:
    """Hand out no kept-alive connection to an attempt that asks for a fresh one (``AttemptSockets.fresh``):
    the one being sent again after a :class:`StaleConnection`. The pool gives the connection
    returned last first, and others idle as long may have been closed by the server just the same.

    Except one made for that attempt since: an auth's resend (``HTTPDigestAuth`` answering the fresh
    connection's challenge) went on a third connection, and an auth whose handshake must stay on one
    connection (NTLM's) would fail there."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        guard = _current()
        if guard is not None:
            guard.next_request()  # before the wait for a connection, the name lookup, the connect
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        if (
            guard is not None
            and guard.fresh
            and conn.sock is not None
            and getattr(conn, "_aio_request_fresh_for", None) is not guard
        ):
            conn.close()  # connects anew when used
        return conn


# How often a wait for a blocking pool's connection looks whether its attempt was aborted (a hedge
# that won, a cancelled caller): nothing wakes a wait on the pool's queue. The deadline is kept to the
# millisecond (no step outlasts it); an abort is seen within this.
_POOL_WAIT_STEP = 0.02


class _BoundedPoolWaitMixin:
    """A pool that blocks when all its connections are out (an adapter mounted with ``pool_block=True``)
    waits for one only while its attempt lasts.

    requests passes no ``pool_timeout``, so urllib3 waited on the pool's queue with none: a wait the
    deadline's timer (it shuts sockets down) cannot wake. A call given 0.5 s came back after 3.8 s,
    when the call holding the pool's only connection let it go. The attempt ends as one aborted
    before it sent anything: ``EmptyPoolError``, which urllib3 neither retries nor answers by putting
    an empty slot back in the pool, and the transport answers the attempt's status (408, 499)."""

    block: bool

    def _get_conn(self, timeout: float | None = None) -> Any:
        guard = _current() if self.block else None
        if guard is None:
            return super()._get_conn(timeout)  # type: ignore[misc]
        until = None if timeout is None else time.monotonic() + timeout  # a pool_timeout the caller gave
        while True:
            left = guard.remaining()
            if guard.reason is None and left <= 0:
                guard.abort(status.TIMEOUT)
            if guard.reason is not None:
                ended = "the attempt ended while it waited for a connection of this pool (pool_block)"
                raise EmptyPoolError(self, ended)  # type: ignore[arg-type]
            step = min(left, _POOL_WAIT_STEP)
            if until is not None:
                step = min(step, until - time.monotonic())
            try:
                return super()._get_conn(max(step, 0.0))  # type: ignore[misc]
            except EmptyPoolError:
                if until is not None and time.monotonic() >= until:
                    raise


class _DetachOnReturnMixin:
    """Unregister a connection from its attempt before it goes back to the pool; closed first if the
    attempt was aborted.

    An aborted attempt's socket was shut down, and urllib3 may still hand its connection back: a
    POST whose peer answered at once without reading the body sent until the deadline's shutdown,
    urllib3 took that broken pipe for the peer's early answer, read the answer and pooled the
    connection, open, though the call was a 408 (8 of 8 calls in a review)."""

    def _put_conn(self, conn: Any) -> None:
        guard = getattr(conn, "_aio_request_guard", None)
        if guard is not None and guard.detach(conn, returned=True):
            conn.close()  # pooled closed, as urllib3 pools a connection that failed: its next use connects anew
        super()._put_conn(conn)  # type: ignore[misc]


class _DrainingPoolMixin:
    """Each connection knows its pool (weakly): the drainer gives a released one back to it.

    And the empty slot a released attempt leaves (urllib3 gives back None for a connection that
    failed: its socket went to the drainer) goes to the bottom of the pool's stack, not the top.
    On top, the next call took it and connected anew at once, and the drained connection came back
    to a pool that had replaced it: every hedge that won still made a new connection, and the pool
    grew until it was full (64 open connections per process in benchmarks/load.py, a third of the
    drained ones then closed for want of a slot)."""

    pool: Any
    _retired: bool

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        conn._aio_request_pool = weakref.ref(self)
        return conn

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:  # every call's connection given back: no look-up of the attempt
            super()._put_conn(conn)  # type: ignore[misc]
            return
        guard = _current()
        waiting = self.pool
        if guard is None or not guard.handed_over or waiting is None or self._retired:
            super()._put_conn(conn)  # type: ignore[misc]
            return
        guard.handed_over = False
        put_empty_slot_at_bottom(waiting)


class GuardedHTTPConnectionPool(
    _FreshWhenAskedMixin,
    _BoundedPoolWaitMixin,
    _DetachOnReturnMixin,
    _DrainingPoolMixin,
    RetiringPoolMixin,
    HTTPConnectionPool,
):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(
    _FreshWhenAskedMixin, _BoundedPoolWaitMixin, _DetachOnReturnMixin, RetiringPoolMixin, HTTPSConnectionPool
):
    ConnectionCls = GuardedHTTPSConnection


POOL_CLASSES = {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


class GuardedPoolBase(_FreshWhenAskedMixin, _BoundedPoolWaitMixin, _DetachOnReturnMixin, RetiringPoolMixin):
    """What a guarded pool of another connection class is made of (socks_sockets.py): that of the
    HTTPS pool, whose connections are never handed to the drainer either."""


# What socks_sockets.py builds its connections from.
GuardedConnectionMixin = _GuardedConnectionMixin
GuardedResponse = _GuardedResponse
is_name = _is_name

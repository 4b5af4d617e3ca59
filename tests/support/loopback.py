"""A real threaded HTTP/1.1 server on 127.0.0.1 for tests, with routes a test defines.

    server = LoopbackServer()
    server.route("/slow", lambda h: (time.sleep(1), h.reply(200, b"late")))
    url = server.url  # "http://127.0.0.1:PORT/"

Every request is recorded in ``server.requests`` (method, path, headers, arrival time) before its
route runs, so tests can check what reached the server and when.
"""

import contextlib
import dataclasses
import itertools
import json
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from benchmarks._shedding_load import owns_listener

if TYPE_CHECKING:
    from django_aio_request import Client, Request, Response


@dataclasses.dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, a reused connection waits ~40 ms
    # for the client's delayed ACK between them.
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def reply_json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        owner.record(Received(self.command, self.path, dict(self.headers.items()), body, time.monotonic()))
        route = owner.find(path)
        if route is None:
            self.reply(404, b"no route")
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up, as tests intend
            route(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's 5 drops connects when many arrive at once on a busy machine
    daemon_threads = True
    block_on_close = False
    owner: "LoopbackServer"


class LoopbackServer:
    def __init__(self) -> None:
        self._routes: dict[str, Callable[[Handler], None]] = {}
        self._lock = threading.Lock()
        self.requests: list[Received] = []
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name=f"loopback-{self.port}"
        )
        self._thread.start()

    def route(self, path: str, handler: Callable[[Handler], None]) -> None:
        """Serve ``path`` (exact, or a prefix when it ends with ``*``) with ``handler``."""
        with self._lock:
            self._routes[path] = handler

    def find(self, path: str) -> Callable[[Handler], None] | None:
        with self._lock:
            if path in self._routes:
                return self._routes[path]
            for pattern, handler in self._routes.items():
                if pattern.endswith("*") and path.startswith(pattern[:-1]):
                    return handler
        return None

    def record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path.split("?", 1)[0] == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def trickle(handler: Handler, *, size: int = 200, interval: float = 0.05, status: int = 200) -> None:
    """Send headers at once, then the body one byte every ``interval`` seconds."""
    handler.send_response(status)
    handler.send_header("Content-Length", str(size))
    handler.end_headers()
    handler.wfile.flush()
    for _ in range(size):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_disconnect(handler: Handler, timeout: float) -> float | None:
    """Block until the client closes the connection of ``handler``, without replying.

    Returns the ``time.monotonic()`` at which the server saw the socket closed (EOF or reset), or
    None if the client kept it open for ``timeout`` seconds (the caller should then reply).
    """
    sock = handler.connection
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return time.monotonic()
        if not data:
            return time.monotonic()
        time.sleep(0.005)  # the client sent more bytes; this helper only watches for the close
    return None


def replies(*statuses: int) -> Callable[[Handler], None]:
    """A route answering its n-th request (counting from 1) with the n-th status, the last one
    repeating; the body is ``n``, so a test can tell which request a response came from."""
    if not statuses:
        raise ValueError("replies() needs at least one status")
    lock = threading.Lock()
    count = 0

    def handle(handler: Handler) -> None:
        nonlocal count
        with lock:
            count += 1
            n = count
        handler.reply(statuses[min(n, len(statuses)) - 1], str(n).encode())

    return handle


@contextlib.contextmanager
def clients(endpoint: str) -> Iterator[Callable[..., "Client"]]:
    """``make(**kwargs)`` builds a client with ``django_aio_request.setup(endpoint=endpoint, **kwargs)``
    (``kwargs`` may name another endpoint); every client made is closed on exit."""
    import django_aio_request

    made: list[Client] = []

    def make(**kwargs: Any) -> "Client":
        client = django_aio_request.setup(**{"endpoint": endpoint, **kwargs})
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()


def widen_backlog(server: LoopbackServer, backlog: int = 128) -> None:
    """Let ``server`` queue ``backlog`` connections not yet accepted (socketserver's default is 5).

    With more simultaneous connects than that and a busy CPU, the kernel drops SYNs and clients
    wait a second to retry: tests that open many connections at once call this first.
    """
    server._server.socket.listen(backlog)


def shed_then_served(retry_after: str) -> Callable[[Handler], None]:
    """A route answering its first request 503 with ``Retry-After: retry_after``, the rest 200."""
    count = itertools.count(1)

    def handle(handler: Handler) -> None:
        if next(count) == 1:
            handler.reply(503, b"shed", {"Retry-After": retry_after})
        else:
            handler.reply(200, b"served")

    return handle


def answer_after(delay: float, status: int = 200, body: bytes = b"") -> Callable[[Handler], None]:
    """A route that answers ``status`` with ``body`` after ``delay`` seconds."""

    def handle(handler: Handler) -> None:
        time.sleep(delay)
        handler.reply(status, body)

    return handle


def answer_when(release: threading.Event, body: bytes = b"late") -> Callable[[Handler], None]:
    """A route that answers 200 with ``body`` once ``release`` is set (at the latest after 5 s): a
    server stalling an attempt for as long as the test wants."""

    def handle(handler: Handler) -> None:
        release.wait(5)
        handler.reply(200, body)

    return handle


def hang_until_disconnect(handler: Handler) -> None:
    """A route that never answers while the client waits (it replies 200 if nobody hung up within 5 s)."""
    if wait_for_disconnect(handler, 5.0) is None:
        handler.reply(200, b"late")


def send_once(url: str, request: "Request", deadline: float, session: Any = None) -> "Response":
    """One attempt through a new ``RequestsTransport`` of its own (on ``session``, a
    ``requests.Session``, if given), closed after: the transport alone."""
    from django_aio_request import RequestsTransport

    transport = RequestsTransport(session)
    try:
        return transport.send(url, request, deadline)
    finally:
        transport.close()


def timed_call(client: "Client", request: "Request", **kwargs: Any) -> tuple["Response", float]:
    """Make a call with ``client.request`` and return its response and how long it took."""
    started = time.monotonic()
    with client.request(request, **kwargs) as response:
        pass
    return response, time.monotonic() - started


def wait_until_listening(process: "subprocess.Popen[Any]", port: int, what: str, seconds: float = 30.0) -> None:
    """Wait until a server started as ``process`` accepts connections on ``port`` (loopback).

    Raises RuntimeError naming ``what`` (for example the server's log) when the process exits or
    ``seconds`` pass first.
    """
    ready_by = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            if process.poll() is not None or time.monotonic() > ready_by:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)
            continue
        # Another process may have taken the port between free_port() and the server's bind: it is
        # what answers then, and the server retries its bind (gunicorn) or exits. Said so, not taken
        # for the server (a test read the other server's 404, 2026-12-07).
        if owns_listener(process.pid, port):
            return
        if process.poll() is not None or time.monotonic() > ready_by:
            raise RuntimeError(f"{what} did not start: another process holds port {port}")
        time.sleep(0.1)


def stop_server(process: "subprocess.Popen[Any]", timeout: float = 15.0) -> None:
    """Stop a server started by :func:`wait_until_listening`'s caller as its operator would: SIGTERM
    (gunicorn's graceful stop), then SIGKILL if it has not exited after ``timeout`` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def full_backlog() -> Iterator[socket.socket]:
    """A listener on 127.0.0.1 that has accepted nothing and whose accept queue is full: on Linux the
    kernel drops further SYNs (tcp_abort_on_overflow=0), so a connect hangs as to a non-routable
    address, its SYN sent again after 1 s. Accepting from it frees the queue."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    try:
        yield listener
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never says a word (a stuck TLS server,
    a frozen database); the connections are closed on exit."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


@contextlib.contextmanager
def holding_the_only_connection(server: LoopbackServer, client: "Client", seconds: float = 0.5) -> Iterator[None]:
    """``client`` (given one connection, ``RequestsTransport(max_connections=1)``) holds it for
    ``seconds`` with a call to ``/hold`` in another thread; the block runs while it does."""

    def held(handler: Handler) -> None:
        time.sleep(seconds)
        handler.reply(200, b"held")

    server.route("/hold", held)

    def hold() -> None:
        from django_aio_request import get

        with client.request(get("hold")) as answer:
            assert answer.status == 200

    first = threading.Thread(target=hold)
    first.start()
    try:
        while not server.received("/hold"):
            time.sleep(0.005)
        yield
    finally:
        first.join()

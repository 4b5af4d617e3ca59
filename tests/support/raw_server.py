"""A TCP server on 127.0.0.1 that answers every connection with bytes a test chose, speaking no
HTTP of its own: for answers no HTTP server library would send (malformed framing, headers, status
lines). It reads the request's head, writes ``answer``, and closes the connection."""

import contextlib
import io
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator


def request_heads(conn: socket.socket, timeout: float) -> Iterator[bytes]:
    """The head of each request ``conn`` brings (a keep-alive connection: one after another), until
    the client closes it; requests here have no body."""
    conn.settimeout(timeout)
    buffered = b""
    while True:
        while b"\r\n\r\n" not in buffered:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buffered += chunk
        head, _, buffered = buffered.partition(b"\r\n\r\n")
        yield head


def read_request(conn: socket.socket, buffered: bytes) -> tuple[bytes, bytes, bytes] | None:
    """Read one request from ``conn``, after the bytes ``buffered`` already holds: its head, its body
    (of its ``Content-Length``, none without one) and what came after it; None if the client closed
    the connection first."""
    while b"\r\n\r\n" not in buffered:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffered += chunk
    head, _, buffered = buffered.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(buffered) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffered += chunk
    return head, buffered[:length], buffered[length:]


def reset_as_it_arrives(conn: socket.socket, buffered: bytes) -> None:
    """Close ``conn`` as the next request arrives, unread (the kernel sends a RST): what gunicorn's
    gthread worker does when its keep-alive time ran out as the request came."""
    if buffered or conn.recv(1, socket.MSG_PEEK):  # its first byte, left unread
        conn.close()


class RawAnswerServer:
    def __init__(self, answer: bytes = b"") -> None:
        self.answer = answer  # may be replaced between calls; each connection takes the current one
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self.connections = 0  # accepted so far
        self.open_connections = 0  # accepted and not closed yet
        self._accepter = threading.Thread(target=self._accept, daemon=True, name="raw-answer-server")
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open_connections += 1
                thread = threading.Thread(target=self._serve, args=(conn, self.answer), daemon=True)
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, answer: bytes) -> None:
        try:
            with conn, contextlib.suppress(OSError):
                self._converse(conn, answer)
        finally:
            with self._lock:
                self.open_connections -= 1
                self._threads.discard(threading.current_thread())

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        """One connection: read the request's head, write ``answer``, close (a subclass may differ)."""
        conn.settimeout(2)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)
        # Wait for the client to close (or give up): a close with unread input sends a RST,
        # which could destroy the answer before the client read it.
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        self._listener.close()


class KeepAliveClosingServer(RawAnswerServer):
    """A keep-alive HTTP/1.1 server that answers ``200 ok`` and, where ``plan(connection, request)``
    (both counted from 1) says so, plays the server's side of the stale-connection race instead:

    * ``"reset"``: close as the request arrives, unread (the kernel sends a RST): what gunicorn's
      gthread worker does when its keep-alive time ran out as the request came. It never saw it.
    * ``"read_and_close"``: read the whole request, then close without answering: it had it.
      ``"read_and_close_late"``: the same 0.25 s after reading it.
    * ``"100_and_close"``, ``"103_and_close"``: read it, answer that interim response only, and close.
    * ``"hang"``: read it and answer nothing until the client goes.

    ``requests_read`` counts the requests whose whole head and body it read (it could have acted on them).
    """

    def __init__(self, plan: Callable[[int, int], str | None], status_line: bytes = b"200 OK") -> None:
        self.plan = plan
        self.status_line = status_line  # of the answers it sends (a failing server: b"500 Internal Server Error")
        self.requests_read = 0
        super().__init__()

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        with self._lock:
            connection = self.connections
        conn.settimeout(10)
        buffered = b""
        for number in itertools.count(1):
            what = self.plan(connection, number)
            if what == "reset":
                reset_as_it_arrives(conn, buffered)
                return
            read = read_request(conn, buffered)
            if read is None:
                return
            head, _, buffered = read
            with self._lock:
                self.requests_read += 1
            if what == "read_and_close_late":
                time.sleep(0.25)
            if what in ("100_and_close", "103_and_close"):
                interim = b"100 Continue" if what.startswith("100") else b"103 Early Hints"
                conn.sendall(b"HTTP/1.1 " + interim + b"\r\n\r\n")
                return
            if what in ("read_and_close", "read_and_close_late"):
                return
            if what == "hang":
                while conn.recv(4096):
                    pass
                return
            if not self.respond(conn, connection, head):
                return

    def respond(self, conn: socket.socket, connection: int, head: bytes) -> bool:
        """Answer the request whose head is ``head``, read on connection ``connection``; whether to
        keep the connection open for the next. Here: ``status_line`` and ``ok``."""
        body = b"" if head.startswith(b"HEAD ") else b"ok"
        conn.sendall(b"HTTP/1.1 " + self.status_line + b"\r\nContent-Length: 2\r\n\r\n" + body)
        return True


class BytesSocket:
    """What ``http.client.HTTPResponse`` reads an answer from (``makefile``), over fixed bytes: for
    tests of the response class alone, with no server."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))

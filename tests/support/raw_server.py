"""A TCP server on 127.0.0.1 that answers every connection with bytes a test chose, speaking no
HTTP of its own: for answers no HTTP server library would send (malformed framing, headers, status
lines). It reads the request's head, writes ``answer``, and closes the connection."""

import contextlib
import socket
import threading
from collections.abc import Iterator


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

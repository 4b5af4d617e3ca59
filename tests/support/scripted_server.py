"""A keep-alive TCP server on 127.0.0.1 whose answers a test writes byte for byte, each after a delay
of its choosing: for what a hedged call's losing attempt leaves on its connection.

    server = ScriptedServer(lambda n, path: (0.3 if n == 1 else 0.0, ok(path)))

``answer(n, path)`` gives the n-th request (counting from 1, over all connections) its delay and its
bytes (or the pieces to write them in, each after a pause), or None to close the connection
instead. ``server.log`` records, per request, its number, path and the connection (counting from
1) it came on; ``server.closed`` the connections the client closed, with when (also while it waited
to answer).
"""

import itertools
import select
import socket
import threading
import time
from collections.abc import Callable

from tests.support.raw_server import read_request

#: (delay, the answer's bytes, or its pieces as (pause before it, bytes)), or None to close instead.
Answer = Callable[[int, str], tuple[float, bytes | list[tuple[float, bytes]]] | None]


def ok(body: str, extra: str = "") -> bytes:
    """A 200 with ``body`` and its Content-Length (``extra``: more header lines, each ending CRLF)."""
    data = body.encode()
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n{extra}\r\n".encode() + data


def _hung_up_within(conn: socket.socket, seconds: float) -> bool:
    """Wait ``seconds`` before answering; True as soon as the client closes the connection meanwhile."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        readable, _, _ = select.select([conn], [], [], left)
        if readable:
            try:
                if not conn.recv(1, socket.MSG_PEEK):
                    return True
            except OSError:
                return True
            time.sleep(0.005)  # bytes of a next request: not this helper's to read
    return False


class ScriptedServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self._lock = threading.Lock()
        self._requests = itertools.count(1)
        self._connections = itertools.count(1)
        self.log: list[tuple[int, str, int]] = []
        self.closed: dict[int, float] = {}
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True, name=f"scripted-{self.port}").start()

    def connections(self) -> int:
        with self._lock:
            return len({conn for _, _, conn in self.log})

    def connection_of(self, path: str) -> int:
        with self._lock:
            return next(conn for _, logged, conn in self.log if logged == path)

    def wait_closed(self, conn: int, within: float) -> float | None:
        end = time.monotonic() + within
        while time.monotonic() < end:
            with self._lock:
                if conn in self.closed:
                    return self.closed[conn]
            time.sleep(0.005)
        return None

    def close(self) -> None:
        self._stop = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # pieces go out as written
            number = next(self._connections)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffered = b""
        with conn:
            while True:
                try:
                    got = read_request(conn, buffered)
                except OSError:
                    got = None
                if got is None:
                    break
                head, _, buffered = got
                path = head.split(b" ", 2)[1].decode("latin-1")
                with self._lock:
                    n = next(self._requests)
                    self.log.append((n, path, number))
                planned = self.answer(n, path)
                if planned is None:
                    break
                delay, data = planned
                if _hung_up_within(conn, delay):
                    break
                try:
                    for pause, piece in [(0.0, data)] if isinstance(data, bytes) else data:
                        time.sleep(pause)
                        conn.sendall(piece)
                except OSError:
                    break
        with self._lock:
            self.closed[number] = time.monotonic()


def first_of_a_path_late(seconds: float, prefix: str = "/") -> Callable[[int, str], tuple[float, bytes]]:
    """The first request of each path starting with ``prefix`` answered after ``seconds`` (a hedge
    of it, the second, at once); every answer's body is its path."""
    seen: set[str] = set()
    lock = threading.Lock()

    def answer(n: int, path: str) -> tuple[float, bytes]:
        with lock:
            first = path not in seen
            seen.add(path)
        return (seconds if first and path.startswith(prefix) else 0.0), ok(path)

    return answer

"""A small threaded HTTP/1.1 keep-alive server on 127.0.0.1 for the benchmarks.

It answers every request with the same ``200`` (a tiny ``ok``, or ``body_size`` bytes), after
``delay_for(index)`` seconds, where ``index`` counts the requests the server has read (from 0, or
from the last :meth:`reset`). The response goes out in a single ``send`` with Nagle off, so no
40 ms delayed-ACK stall can hide in the figures, and the request parser is deliberately minimal
(request line, headers, ``Content-Length`` body) so the server adds as little as possible to what
is measured.

In-process use::

    with BenchServer(delay_for=lambda index: 0.0) as server:
        requests.get(server.url + "ping")
        server.requests  # how many requests it has read

Out of process (so its Python work does not share the benchmark's GIL)::

    python -m benchmarks._server   # prints "PORT <n>", serves until stdin closes (bounded in time)
"""

import argparse
import contextlib
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

DelayFor = Callable[[int], float]

_MAX_LINE = 65_536
_MAX_HEADERS = 100


def _answer(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _no_delay(_index: int) -> float:
    return 0.0


class _Handler(socketserver.StreamRequestHandler):
    """One keep-alive connection: read requests off it one after another until it closes."""

    disable_nagle_algorithm = True
    wbufsize = 0
    server: "_TCPServer"

    def handle(self) -> None:
        owner = self.server.owner
        owner._opened(self.connection)
        try:
            with contextlib.suppress(OSError, ValueError):  # the client went away (e.g. a cancelled hedge)
                while self._serve_one(owner):
                    pass
        finally:
            owner._closed(self.connection)

    def _serve_one(self, owner: "BenchServer") -> bool:
        """Serve one request; False when the connection is to be closed."""
        line = self.rfile.readline(_MAX_LINE)
        while line in (b"\r\n", b"\n"):  # RFC 9112 2.2: ignore blank lines before a request line
            line = self.rfile.readline(_MAX_LINE)
        if not line:
            return False
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.wfile.write(_BAD)
            return False
        http11 = parts[2] == b"HTTP/1.1"
        keep_alive = http11
        length = 0
        for _ in range(_MAX_HEADERS):
            header = self.rfile.readline(_MAX_LINE)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                token = value.strip().lower()
                keep_alive = token != b"close" if http11 else token == b"keep-alive"
            elif name == b"transfer-encoding":
                self.wfile.write(_BAD)  # the benchmarks never send chunked bodies
                return False
        else:
            self.wfile.write(_BAD)
            return False
        if length:
            self.rfile.read(length)
        delay = owner.delay_for(owner._arrived())
        if delay > 0:
            time.sleep(delay)
        self.wfile.write(owner.answer)
        return keep_alive


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 512
    owner: "BenchServer"


class BenchServer:
    """The server, serving from a daemon thread until :meth:`close`."""

    def __init__(self, delay_for: DelayFor = _no_delay, *, body_size: int | None = None) -> None:
        self.delay_for = delay_for
        self.answer = _answer(b"ok" if body_size is None else b"x" * body_size)
        self._lock = threading.Lock()
        self._requests = 0
        self._connections = 0
        self._open: set[socket.socket] = set()
        self._server = _TCPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="bench-server"
        )
        self._thread.start()

    @property
    def requests(self) -> int:
        """Requests read since the start or the last reset (including ones whose client gave up)."""
        with self._lock:
            return self._requests

    @property
    def connections(self) -> int:
        """Connections accepted since the start or the last reset."""
        with self._lock:
            return self._connections

    def reset(self) -> None:
        """Start counting requests (and the ``index`` given to ``delay_for``) from 0 again."""
        with self._lock:
            self._requests = 0
            self._connections = 0

    def _arrived(self) -> int:
        with self._lock:
            index = self._requests
            self._requests += 1
            return index

    def _opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(sock)

    def _closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for sock in self._open:  # wake the handler threads blocked reading idle keep-alive connections
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> "BenchServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


@contextlib.contextmanager
def serve_in_subprocess(
    *, max_seconds: float = 900.0, body_size: int | None = None, slow_every: int = 0, slow_seconds: float = 0.0
) -> Iterator[str]:
    """Run a server in a child Python process; yields its base URL. It answers at once, except every
    ``slow_every``-th request it reads (from the first; 0: none), which it answers after ``slow_seconds``.

    The child serves until its stdin is closed (when the block ends) or ``max_seconds`` pass.
    """
    command = [sys.executable, "-m", "benchmarks._server", "--max-seconds", str(max_seconds)]
    if body_size is not None:
        command += ["--body-size", str(body_size)]
    if slow_every:
        command += ["--slow-every", str(slow_every), "--slow-seconds", str(slow_seconds)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child prints its port or dies (then this is "")
        if not line.startswith("PORT "):
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/"
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop after this long at the latest")
    parser.add_argument("--body-size", type=int, default=None, help="answer this many bytes (default: 'ok')")
    parser.add_argument("--slow-every", type=int, default=0, help="answer every n-th request late (0: none)")
    parser.add_argument("--slow-seconds", type=float, default=0.0, help="how late (see --slow-every)")
    args = parser.parse_args()
    every, late = args.slow_every, args.slow_seconds
    server = BenchServer(
        (lambda index: late if index % every == 0 else 0.0) if every else _no_delay, body_size=args.body_size
    )
    done = threading.Event()

    def wait_for_stdin_eof() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()
        done.set()

    threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
    print(f"PORT {server.port}", flush=True)
    try:
        done.wait(timeout=args.max_seconds)
    finally:
        server.close()


if __name__ == "__main__":
    main()

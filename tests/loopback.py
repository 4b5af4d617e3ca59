"""A real threaded HTTP/1.1 server on 127.0.0.1 for tests, with routes a test defines.

    server = LoopbackServer()
    server.route("/slow", lambda h: (time.sleep(1), h.reply(200, b"late")))
    url = server.url  # "http://127.0.0.1:PORT/"

Every request is recorded in ``server.requests`` (method, path, headers, arrival time) before its
route runs, so tests can check what reached the server and when.
"""

import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclasses.dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
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

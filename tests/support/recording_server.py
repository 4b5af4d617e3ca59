"""A keep-alive HTTP/1.1 server on 127.0.0.1 that records every request byte for byte (head and
``Content-Length`` body) and answers each with ``200 ok``: to compare what two clients put on the
wire, which an HTTP server library would parse and normalise away."""

import contextlib
import socket
import threading

from tests.support.raw_server import read_request


class RecordingServer:
    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._lock = threading.Lock()
        self._requests: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        accepter = threading.Thread(target=self._accept, daemon=True, name="recording-server")
        accepter.start()
        self._threads.append(accepter)

    def requests(self) -> list[bytes]:
        with self._lock:
            return list(self._requests)

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
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            while not self._stop.is_set():
                read = read_request(conn, buffer)
                if read is None:
                    return
                head, body, buffer = read
                with self._lock:
                    self._requests.append(head + b"\r\n\r\n" + body)
                # A HEAD answer has a Content-Length but no body.
                conn.sendall(self.ANSWER[:-2] if head.startswith(b"HEAD ") else self.ANSWER)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

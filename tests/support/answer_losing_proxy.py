"""A TCP proxy on loopback that forwards everything to a server, except that, armed, it loses the
answer to the next request it sees with a given mark: the server does what it was asked, and the
client waits for an answer that never comes, until its socket timeout. What a Redis that stalls
past its clients' socket timeout right after a write does to them, on one connection, at the moment
a test picks. With ``answer_delay``, every answer is held that long first: a Redis that answers slowly."""

import select
import socket
import threading
import time
from collections.abc import Iterator


class AnswerLosingProxy:
    """Listens on ``port`` (127.0.0.1), each connection forwarded to ``target_port``."""

    def __init__(self, target_port: int, answer_delay: float = 0.0) -> None:
        self._target = target_port
        self._delay = answer_delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._mark: bytes | None = None
        self._lock = threading.Lock()
        #: Set once the answer to a marked request was lost.
        self.lost = threading.Event()
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="answer-losing-proxy").start()

    def lose_answer_to(self, mark: bytes) -> None:
        """Lose the answer to the next request that contains ``mark`` (and every later byte the
        server sends on that connection: its client gives up on it)."""
        with self._lock:
            self._mark = mark
            self.lost.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._forward, args=(client, server), daemon=True).start()

    def _marked(self, data: bytes) -> bool:
        with self._lock:
            if self._mark is None or self._mark not in data:
                return False
            self._mark = None
            return True

    def _forward(self, client: socket.socket, server: socket.socket) -> None:
        losing = False
        try:
            for ready, data in _chunks(client, server):
                if ready is client:
                    if not losing and self._marked(data):
                        losing = True
                    server.sendall(data)
                elif losing:
                    self.lost.set()  # the server answered; the client never hears it
                else:
                    if self._delay:
                        time.sleep(self._delay)
                    client.sendall(data)
        except (OSError, ValueError):  # closed, by either side or by close() (select() of a closed socket)
            pass
        finally:
            client.close()
            server.close()


def _chunks(client: socket.socket, server: socket.socket) -> Iterator[tuple[socket.socket, bytes]]:
    """What either side sends, as it comes, until one closes."""
    while True:
        readable, _, _ = select.select([client, server], [], [])
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            yield sock, data

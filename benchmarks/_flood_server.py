"""A loopback server, in a process of its own, that answers every request with a flood without end
(for benchmarks/flood_lateness.py): ``continue``, interim ``100 Continue`` responses; ``chunks``, a
200 whose chunked body is 1-byte chunks; ``gzip``, a 200 in ``Content-Encoding: gzip`` whose body,
running to the connection's close, is empty gzip members (each decodes to nothing). Prints its port,
then serves until killed.

    python -m benchmarks._flood_server continue|chunks|gzip
"""

import gzip
import socket
import socketserver
import sys

UNITS = {
    "continue": (b"", b"HTTP/1.1 100 Continue\r\n\r\n"),
    "chunks": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n"),
    "gzip": (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n", gzip.compress(b"")),
}


class _Flood(socketserver.BaseRequestHandler):
    head = b""
    block = b""

    def handle(self) -> None:
        sock: socket.socket = self.request
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                return
            received += data
        try:
            sock.sendall(self.head)
            while True:
                sock.sendall(self.block)
        except OSError:  # the client closed: done
            return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def main() -> None:
    head, unit = UNITS[sys.argv[1]]
    handler = type("Flood", (_Flood,), {"head": head, "block": unit * (16384 // len(unit))})
    with _Server(("127.0.0.1", 0), handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

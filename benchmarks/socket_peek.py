"""What a peek at a waiting request costs the thread that makes it while another thread computes.

``PriorityThreadWorker`` peeks at each request's first bytes on gunicorn's main loop
(``django_aio_request/server/socket_peek.py``). Two ways, interleaved one call each, on a socket
pair holding a request head, with ``--spinners`` threads running Python beside them and the switch
interval at ``--switch-interval`` (2 ms, what ``SHEDDING`` sets):

* ``socket.recv(MSG_PEEK | MSG_DONTWAIT)`` (the baseline): releases the GIL for the system call;
* ``socket_peek.peek`` (libc ``recv`` through ``ctypes.PyDLL``): keeps the GIL.

Printed: median, mean and p99 of each in µs, and the ratio of the means.

    .venv/bin/python -m benchmarks.socket_peek [--calls 2000] [--spinners 1] [--switch-interval 0.002]
"""

import argparse
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable

from django_aio_request.server import socket_peek

HEAD = b"GET /cpu HTTP/1.1\r\nHost: svc\r\nX-Request-Priority: high\r\nX-Request-Timeout: 4.987\r\n\r\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--spinners", type=int, default=1)
    parser.add_argument("--switch-interval", type=float, default=0.002)
    args = parser.parse_args()
    if socket_peek._recv is None:
        print("libc recv could not be loaded here: socket_peek uses socket.recv")
        return 1
    sys.setswitchinterval(args.switch_interval)
    a, b = socket.socketpair()
    a.sendall(HEAD)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(100))

    spinners = [threading.Thread(target=spin) for _ in range(args.spinners)]
    for thread in spinners:
        thread.start()
    time.sleep(0.05)

    def with_socket() -> bytes | None:
        return b.recv(8192, socket.MSG_PEEK | socket.MSG_DONTWAIT)

    def with_peek() -> bytes | None:
        return socket_peek.peek(b, 8192)

    ways: dict[str, Callable[[], bytes | None]] = {
        "socket.recv (releases the GIL)": with_socket,
        "socket_peek.peek (keeps it)": with_peek,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for i in range(args.calls):
            order = list(ways.items()) if i % 2 == 0 else list(ways.items())[::-1]
            for name, call in order:
                started = time.perf_counter()
                got = call()
                times[name].append(time.perf_counter() - started)
                assert got == HEAD
    finally:
        stop.set()
        for thread in spinners:
            thread.join()
        a.close()
        b.close()
    print(f"{args.calls} calls each, interleaved; {args.spinners} thread(s) running Python beside; "
          f"switch interval {args.switch_interval * 1000:g} ms")  # fmt: skip
    for name, series in times.items():
        series.sort()
        p99 = series[int(len(series) * 0.99)]
        median, mean = statistics.median(series) * 1e6, statistics.mean(series) * 1e6
        print(f"  {name:32} median {median:7.1f} µs  mean {mean:7.1f} µs  p99 {p99 * 1e6:8.1f} µs")
    base, ours = (statistics.mean(series) for series in times.values())
    print(f"  mean, peek / socket.recv: {ours / base:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What billing's CPU pays a request: on a kept-alive connection, on a new one, and when its caller
hangs up before the answer (the attempt a winning hedge aborts).

``benchmarks/load.py``'s hedged runs cost billing 10-15% more CPU a call for 4-6% more requests.
A hedge that wins leaves billing three requests where a single call leaves one: the hedge's, the
aborted attempt's (its connection shut down by the caller to stop its blocked read: billing writes
the answer to a closed connection) and, for the caller's next call, a new connection. This measures
each kind on its own, against the same billing ``load.py`` starts (``benchmarks/_load_billing_settings.py``
on the demo's threaded server, ``testproject.serve``, one process, a thread a connection):

* ``keep-alive``: ``--requests`` GETs of ``/demo/hop`` on one kept-alive connection;
* ``new connection``: the same, each on a connection of its own, closed after its answer;
* ``abandoned``: each on a connection of its own, asks for an answer after ``--answer-after`` (50)
  ms and is shut down right after it was sent, in batches of 20 (then the batch's answers are
  waited out). Its cost less a new connection's is what the hang-up itself costs billing.

Billing's CPU is its process's user + system time (``/proc/PID/stat``) over each batch, per request,
after billing has answered everything (``--settle`` seconds). Three kinds a round, in an order that
turns round every round (ABC, CBA, ...), ``--rounds`` (5) rounds after a warm-up; the medians over
rounds, and each against keep-alive.

    .venv/bin/python -m benchmarks.billing_connections [--requests 1000] [--rounds 5] [--answer-after 0.05]
"""

import argparse
import http.client
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = "/demo/hop?slow=0"
ABANDONED_BATCH = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def keep_alive(port: int, count: int, answer_after: float) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(count):
            connection.request("GET", PATH)
            connection.getresponse().read()
    finally:
        connection.close()


def new_connection(port: int, count: int, answer_after: float) -> None:
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", PATH)
            connection.getresponse().read()
        finally:
            connection.close()


def abandoned(port: int, count: int, answer_after: float) -> None:
    request = f"GET /demo/hop?slow=1&slow_delay={answer_after} HTTP/1.1\r\nHost: billing\r\n\r\n".encode()
    sent = 0
    while sent < count:
        batch = []
        for _ in range(min(ABANDONED_BATCH, count - sent)):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            batch.append(sock)
        time.sleep(0.005)  # read by billing: what a hedge's loser has sent before it is aborted
        for sock in batch:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        sent += len(batch)
        time.sleep(answer_after + 0.03)  # billing writes these answers to closed connections


KINDS: dict[str, Callable[[int, int, float], None]] = {
    "keep-alive": keep_alive,
    "new connection": new_connection,
    "abandoned": abandoned,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--answer-after", type=float, default=0.05)
    parser.add_argument("--settle", type=float, default=0.3)
    args = parser.parse_args(argv)

    port = free_port()
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks._load_billing_settings",
        "DEMO_BILLING_PORT": str(port),
        "DEMO_DATABASE": ":memory:",
    }
    billing = subprocess.Popen(
        [sys.executable, "-m", "testproject.serve", "--exit-with-parent"],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or billing.poll() is not None:
                    raise RuntimeError("billing did not start") from None
                time.sleep(0.1)
        print(f"Python {platform.python_version()}, {platform.machine()}; billing on the demo's threaded server")
        for kind in KINDS.values():  # warm-up
            kind(port, max(20, args.requests // 10), args.answer_after)
        time.sleep(args.settle)
        figures: dict[str, list[float]] = {name: [] for name in KINDS}
        order = list(KINDS)
        for _ in range(args.rounds):
            for name in order:
                before = cpu_seconds(billing.pid)
                KINDS[name](port, args.requests, args.answer_after)
                time.sleep(args.settle)
                figures[name].append((cpu_seconds(billing.pid) - before) / args.requests * 1000)
            order.reverse()
    finally:
        billing.kill()
        billing.wait()
    base = statistics.median(figures["keep-alive"])
    print(f"{args.rounds} rounds of {args.requests} requests of each kind, medians over rounds:")
    print(f"  {'billing CPU a request':<24}{'ms':>8}{'against keep-alive':>20}{'more, ms':>10}")
    for name, values in figures.items():
        value = statistics.median(values)
        print(f"  {name:<24}{value:>8.3f}{value / base:>19.2f}x{value - base:>10.3f}")
    hang_up = statistics.median(figures["abandoned"]) - statistics.median(figures["new connection"])
    print(f"  the hang-up itself (abandoned less new connection): {hang_up:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

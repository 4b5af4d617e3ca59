"""How late calls end when many new TLS connections meet a peer that never answers the handshake.

The peer (on loopback) accepts every TCP connection and then says nothing, so each ``https://``
call waits in the TLS handshake until its deadline. Every timed-out connection is dropped, so each
call makes a new one, and a new TLS connection needs the CA certificates in an ``SSLContext``:
urllib3 loads the bundle into a new context for every connection (tens of milliseconds of CPU no
deadline stops), where this package's transport loads it once per host (transport/direct_send.py).
What is measured is how far past its deadline each call returns (its *overshoot*):

* client:   ``clients``' sync calls, single attempt, ``TIMEOUT`` the deadline, from ``--threads`` threads;
* requests: the anchor, plain ``requests.Session.get(url, timeout=deadline)`` from as many threads;
* client, async: ``--async-calls`` ``arequest()`` calls at once on one event loop (0: not run).

Rounds alternate between the variants (the order flipping every round), so a busy moment of the
machine hits each alike. Verification is on (certifi's bundle, the default): the bundle is what
costs, and the handshake never gets as far as checking the peer.

    .venv/bin/python -m benchmarks.tls_deadline [--threads 32] [--calls 2] [--rounds 3]
        [--deadline 0.3] [--async-calls 200]
"""

import argparse
import asyncio
import logging
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import requests

import django_aio_request as dar
from benchmarks._stats import percentile


@contextmanager
def stalling_tls_peer() -> Iterator[str]:
    """An ``https://`` URL whose server accepts connections and never answers the TLS handshake."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never read: the client's ClientHello goes unanswered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(2)
        listener.close()
        for conn in held:
            conn.close()


def in_threads(threads: int, calls: int, one: Callable[[], None], deadline: float) -> list[float]:
    """Each of ``threads`` threads makes ``calls`` calls in turn; every call's overshoot in ms."""
    late: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait()
        for _ in range(calls):
            began = time.monotonic()
            one()
            over = (time.monotonic() - began - deadline) * 1000
            with lock:
                late.append(over)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return late


def client_call(client: dar.Client) -> Callable[[], None]:
    def one() -> None:
        with client.request(dar.get("")) as response:
            if response.status != 408:
                raise RuntimeError(f"expected the deadline's 408, got {response.status}")

    return one


def requests_call(url: str, deadline: float) -> Callable[[], None]:
    local = threading.local()

    def one() -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        try:
            session.get(url, timeout=deadline)
        except requests.exceptions.RequestException:
            return
        raise RuntimeError("the stalling peer answered")

    return one


def async_calls(client: dar.Client, count: int, deadline: float) -> list[float]:
    async def one() -> float:
        began = time.monotonic()
        async with client.arequest(dar.get("")) as response:
            if response.status != 408:
                raise RuntimeError(f"expected the deadline's 408, got {response.status}")
        return (time.monotonic() - began - deadline) * 1000

    async def all_at_once() -> list[float]:
        return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(all_at_once())


def line(name: str, late: list[float]) -> str:
    ordered = sorted(late)
    return (
        f"  {name:<26}{len(ordered):>7}{percentile(ordered, 50):>9.1f}{percentile(ordered, 99):>9.1f}"
        f"{ordered[-1]:>9.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--calls", type=int, default=2, help="calls each thread makes in a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=0.3)
    parser.add_argument("--async-calls", type=int, default=200)
    args = parser.parse_args(argv)
    # Every call ends at its deadline, which the transport logs as a warning: hundreds of lines.
    logging.getLogger("django_aio_request").setLevel(logging.ERROR)

    print(f"Python {platform.python_version()}, requests {requests.__version__}, {platform.machine()}")
    print(
        f"{args.rounds} rounds of {args.threads} threads x {args.calls} calls (and {args.async_calls} async calls)"
        f" to a peer that never answers the TLS handshake, deadline {args.deadline} s"
    )
    late: dict[str, list[float]] = {"client": [], "requests": [], "client, async": []}
    with stalling_tls_peer() as url:
        client = dar.setup(endpoint=url, safe_method_strategy=dar.single_attempt_strategy(), timeout=args.deadline)
        try:
            ours, anchor = client_call(client), requests_call(url, args.deadline)
            variants: list[tuple[str, Callable[[], list[float]]]] = [
                ("client", lambda: in_threads(args.threads, args.calls, ours, args.deadline)),
                ("requests", lambda: in_threads(args.threads, args.calls, anchor, args.deadline)),
            ]
            if args.async_calls:
                variants.append(("client, async", lambda: async_calls(client, args.async_calls, args.deadline)))
            for round_number in range(args.rounds):
                order = variants if round_number % 2 == 0 else variants[::-1]
                for name, run in order:
                    late[name].extend(run())
        finally:
            client.close()

    print()
    print(f"  {'ms past the deadline':<26}{'calls':>7}{'p50':>9}{'p99':>9}{'max':>9}")
    for name, values in late.items():
        if values:
            print(line(name, values))
    print()
    mine, theirs = percentile(sorted(late["client"]), 99), percentile(sorted(late["requests"]), 99)
    print(
        f"  p99 overshoot, client against requests: {mine:.1f} against {theirs:.1f} ms"
        f" ({mine / max(theirs, 1e-9):.3f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How late calls end when many threads at once each read a flood that never ends.

A peer that floods (endless ``100 Continue`` interim responses, a body of 1-byte chunks, or a gzip
body of empty members to the connection's close, ``--kinds gzip``, which decodes to nothing) keeps
the reading thread busy parsing what has already arrived: the deadline's timer can wake a read
blocked on a socket, not stop a thread running Python. Each thread notices its deadline between
pieces of the answer, when it holds the GIL; with many threads parsing at once on two cores, that
is when the interpreter next hands it the GIL. So the lateness grows with the number of threads,
for any Python code that reads this way.

The anchor, measured in the same run and interleaved with the client round by round: the same
number of threads, each reading the same flood with a plain socket (``readline()`` and ``read()``
on its file), parsing no more than any HTTP reader must and checking its deadline between pieces
(for ``gzip``: 16 KiB read at a time, each decoded member by member with ``zlib``, as urllib3 does).
The client: ``setup()`` with one attempt per call (``--strategy sequential``: 3 attempts, the
default for GETs), its deadline the same. The flood server runs in a process of its own. Printed
per kind: the lateness (end minus deadline) of every call, p50 / p99 / worst, anchor and client,
and the ratio of the worsts.

    .venv/bin/python -m benchmarks.flood_lateness [--threads 32] [--deadline 0.3] [--rounds 3]
        [--calls 3] [--kinds continue,chunks,gzip] [--strategy single|sequential] [--async]
"""

import argparse
import asyncio
import functools
import logging
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import django_aio_request as dar
from benchmarks._stats import percentile


@contextmanager
def flood_server(kind: str) -> Iterator[int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._flood_server", kind], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


def in_threads(threads: int, calls: int, one: Callable[[], float]) -> list[float]:
    """``calls`` calls of ``one`` in each of ``threads`` threads started together: their latenesses."""
    lateness: list[float] = []
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait()
        for _ in range(calls):
            lateness.append(one())

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return lateness


def anchor_call(port: int, deadline: float, kind: str) -> float:
    """A plain socket reading the flood as any HTTP reader must, its deadline checked between pieces:
    an interim response's status line and blank line; a chunk's size line, then its data and CRLF."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: flood\r\n\r\n")
        ends = time.monotonic() + deadline
        with sock.makefile("rb") as stream:
            if kind == "chunks":
                while stream.readline() not in (b"\r\n", b""):  # the 200's head
                    pass
            if kind == "gzip":
                while stream.readline() not in (b"\r\n", b""):  # the 200's head
                    pass
                decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while time.monotonic() < ends:
                if kind == "chunks":
                    stream.read(int(stream.readline(), 16) + 2)
                elif kind == "gzip":
                    data = stream.read1(16384)
                    while data:  # a new decoder for each member, as any gzip reader must
                        decoder.decompress(data)
                        data = decoder.unused_data
                        if decoder.eof:
                            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    stream.readline()
                    stream.readline()
        return time.monotonic() - ends


def client_call(client: dar.Client, deadline: float) -> float:
    ends = time.monotonic() + deadline
    with client.request(dar.get("flood"), deadline=dar.Deadline.from_timeout(deadline)) as response:
        if response.status != 408:
            raise AssertionError(f"a flood answered {response.status}, not 408")
    return time.monotonic() - ends


def client_async_round(client: dar.Client, deadline: float, threads: int, calls: int) -> list[float]:
    """``threads`` concurrent tasks on one event loop, ``calls`` calls each."""

    async def one() -> float:
        ends = time.monotonic() + deadline
        async with client.arequest(dar.get("flood"), deadline=dar.Deadline.from_timeout(deadline)) as response:
            if response.status != 408:
                raise AssertionError(f"a flood answered {response.status}, not 408")
        return time.monotonic() - ends

    async def main() -> list[float]:
        lateness: list[float] = []
        for _ in range(calls):
            lateness.extend(await asyncio.gather(*(one() for _ in range(threads))))
        return lateness

    return asyncio.run(main())


def summary(lateness: list[float]) -> str:
    ordered = sorted(lateness)
    return " / ".join(f"{percentile(ordered, q) * 1000:.0f}" for q in (50, 99, 100))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="calls per thread and round")
    parser.add_argument("--kinds", default="continue,chunks")
    parser.add_argument("--strategy", choices=("single", "sequential"), default="single")
    parser.add_argument("--async", dest="use_async", action="store_true", help="the client's calls as asyncio tasks")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # a warning per abandoned flood would be the run's cost, not the client's
    strategy = (
        dar.single_attempt_strategy()
        if args.strategy == "single"
        else dar.sequential_strategy(attempts_count=3, delays_provider=dar.constant_delays(delay=0.01))
    )
    print(
        f"{args.threads} {'tasks' if args.use_async else 'threads'} x {args.calls} calls a round, {args.rounds} rounds,"
        f" deadline {args.deadline} s, strategy {args.strategy}; lateness p50 / p99 / worst, ms"
    )
    print("| flood | round | anchor: plain socket | client | worst, client / anchor |")
    print("| --- | --- | --- | --- | --- |")
    for kind in args.kinds.split(","):
        measure(kind, args, strategy)


def measure(kind: str, args: argparse.Namespace, strategy: dar.RequestStrategy) -> None:
    """The rounds of one kind of flood: a table row a round, and one for all of them."""
    with flood_server(kind) as port:
        client = dar.setup(
            endpoint=f"http://127.0.0.1:{port}/",
            metrics=False,
            timeout=args.deadline,
            safe_method_strategy=strategy,
            retry_budget=None,
            max_workers=args.threads,
        )
        anchor = functools.partial(anchor_call, port, args.deadline, kind)
        ours = functools.partial(client_call, client, args.deadline)
        totals: dict[str, list[float]] = {"anchor": [], "client": []}
        try:
            for round_number in range(1, args.rounds + 1):
                # Interleaved, the order flipping every round: the machine's mood hits both alike.
                measured: dict[str, list[float]] = {}
                for name in ("anchor", "client") if round_number % 2 else ("client", "anchor"):
                    if name == "anchor":
                        measured[name] = in_threads(args.threads, args.calls, anchor)
                    elif args.use_async:
                        measured[name] = client_async_round(client, args.deadline, args.threads, args.calls)
                    else:
                        measured[name] = in_threads(args.threads, args.calls, ours)
                    totals[name].extend(measured[name])
                print(row(kind, str(round_number), measured))
        finally:
            client.close()
        print(row(kind, "all", totals))


def row(kind: str, label: str, lateness: dict[str, list[float]]) -> str:
    ratio = max(lateness["client"]) / max(*lateness["anchor"], 1e-6)
    return f"| {kind} | {label} | {summary(lateness['anchor'])} | {summary(lateness['client'])} | {ratio:.2f}x |"


if __name__ == "__main__":
    main()

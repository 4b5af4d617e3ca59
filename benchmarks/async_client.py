"""What ``client.arequest()`` costs per call against the sync call, and against wrapping the sync
call in asgiref's ``sync_to_async`` (what an async view had to do before ``arequest``).

One GET getting a tiny ``200 ok`` from a local keep-alive server in a child process
(benchmarks/_server.py), on one client (single attempt, metrics on), made three ways inside one
event loop:

* sync:          ``with client.request(...)`` called straight from the loop (the baseline: the
  same work with no thread hop; it blocks the loop, which nothing else needs here);
* sync_to_async: ``await sync_to_async(call)()``, asgiref's default (thread_sensitive=True: one
  shared thread);
* arequest:      ``async with client.arequest(...)``.

The three are interleaved one call each per round, in a new random order each round, after a
warm-up, so that noise hits all alike (and no way always runs right after the same other: a call's
time depends on the code that ran just before it, see benchmarks/overhead.py). Printed: p50 and
p99 of each, their ratio to sync, and the median over rounds of (way - sync) in microseconds.

    .venv/bin/python -m benchmarks.async_client [--rounds 5000] [--warmup 300]
"""

import argparse
import asyncio
import platform
import random
import statistics
import time
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async

import django_aio_request as dar
from benchmarks._server import serve_in_subprocess
from benchmarks._stats import percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()
    with serve_in_subprocess() as url:
        client = dar.setup(endpoint=url, safe_method_strategy=dar.single_attempt_strategy())
        try:
            results = asyncio.run(measure(client, args.rounds, args.warmup))
        finally:
            client.close()
    report(results, args.rounds)


async def measure(client: dar.Client, rounds: int, warmup: int) -> dict[str, list[float]]:
    request = dar.get("ping")

    def sync_call() -> int:
        with client.request(request) as response:
            response.read()
            return response.status

    async def sync() -> int:
        return sync_call()

    async def wrapped() -> int:
        return await sync_to_async(sync_call)()

    async def native() -> int:
        async with client.arequest(request) as response:
            response.read()
            return response.status

    ways: dict[str, Callable[[], Awaitable[int]]] = {"sync": sync, "sync_to_async": wrapped, "arequest": native}
    names = list(ways)
    times: dict[str, list[float]] = {name: [] for name in names}
    order = list(names)
    shuffle = random.Random(16).shuffle
    for index in range(warmup + rounds):
        shuffle(order)
        for name in order:
            started = time.perf_counter()
            status = await ways[name]()
            elapsed = time.perf_counter() - started
            if status != 200:
                raise RuntimeError(f"{name}: status {status}")
            if index >= warmup:
                times[name].append(elapsed)
    return times


def report(times: dict[str, list[float]], rounds: int) -> None:
    print(f"Python {platform.python_version()}, {rounds} interleaved rounds")
    base = sorted(times["sync"])
    for name, series in times.items():
        ordered = sorted(series)
        p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
        extra = statistics.median(a - b for a, b in zip(series, times["sync"], strict=True)) * 1e6
        print(
            f"{name:>14}: p50 {p50 * 1e6:7.0f} us  p99 {p99 * 1e6:7.0f} us  "
            f"p50/sync {p50 / percentile(base, 50):5.2f}x  p99/sync {p99 / percentile(base, 99):5.2f}x  "
            f"median extra {extra:6.0f} us"
        )


if __name__ == "__main__":
    main()

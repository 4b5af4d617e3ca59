"""Tail latency and extra load of hedged (parallel) GETs against a server with a slow tail.

The server (benchmarks/_server.py, threaded, on 127.0.0.1) answers 5% of the requests it receives
after 500 ms and the rest after 2 ms. Which ones are slow is fixed in advance: request number ``i``
that the server reads (counted from 0 for each variant) is slow when draw ``i`` of a
``random.Random(seed)`` sequence is below 0.05, so every variant meets the same sequence of slow
and fast requests; a hedge is simply the next request the server reads, slow or not by the same
rule (so about 5% of hedges are slow too, as in life).

Each variant makes the same number of logical GETs (default 1,000) through its own client:

* (a) single attempt: ``single_attempt_strategy()``;
* (b) hedged, fixed delay: ``parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.02))``;
* (c) hedged, adaptive: ``parallel_strategy(attempts_count=2, delays_provider=PercentileDelaysProvider())``,
  the provider with its defaults (95th percentile, at least 50 ms);
* (d) as (c) with ``PercentileDelaysProvider(min_delay_seconds=0.005)``, so the learned percentile,
  not the 50 ms floor, sets the delay;
* the anchor, aio-request (aiohttp) against the same server, from as many asyncio tasks as there are
  caller threads: (e) its ``single_attempt_strategy()`` and (f) its ``parallel_strategy(attempts_count=2,
  delays_provider=constant_delays(delay=0.02))``, as (b).

Before the measured calls every variant makes ``--warmup`` unmeasured calls (default 200) with
the same client, which opens its connections and lets the adaptive provider learn (it needs 20
samples); the server's counters are then reset, so the cold start is NOT in the figures (run with
``--warmup 0`` to include it). The calls come from ``--threads`` concurrent caller threads
(default 4) so that the 500 ms requests do not make the run long; latencies are per call, from the
caller's ``client.request`` to the end of its ``with`` block.

How to read it: p50/p99/p99.9 are per-call latencies (nearest rank; with 1,000 calls p99.9 is the
second slowest). "load" is the requests the server read divided by the logical calls: 1.00 means
no extra requests, 1.06 means 6% extra. The targets: a hedged p99 at most 1/10 of the single
attempt p99, with at most 10% extra load. With two attempts about 0.25% of calls (5% x 5%) meet a
slow request twice, more than the 0.1% that p99.9 looks at, so a hedged p99.9 near 500 ms is what
this workload predicts, not a fault; how many such pairs a run meets depends on the seed.

    .venv/bin/python -m benchmarks.hedging [--calls 1000] [--threads 4] [--warmup 200] [--seed 1] [--variants abcdef]
"""

import argparse
import asyncio
import dataclasses
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import aio_request
import aiohttp

import django_aio_request as dar
from benchmarks._server import BenchServer
from benchmarks._stats import percentile

SLOW_FRACTION = 0.05
SLOW_SECONDS = 0.5
FAST_SECONDS = 0.002
TARGET_P99_RATIO = 0.10
TARGET_LOAD = 1.10
PATH = "item"


@dataclasses.dataclass(frozen=True)
class Variant:
    key: str
    label: str
    strategy: Callable[[], Any]  # a dar.RequestStrategy, or an aio-request one when ``aio``
    describe: Callable[[Any], str] = lambda _strategy: ""
    aio: bool = False  # the anchor: aio-request on aiohttp


def adaptive(provider: Callable[[], dar.PercentileDelaysProvider]) -> Callable[[], dar.RequestStrategy]:
    return lambda: dar.parallel_strategy(attempts_count=2, delays_provider=provider())


def learned_delay(strategy: dar.RequestStrategy) -> str:
    delays = getattr(strategy, "delays", None)
    if isinstance(delays, dar.PercentileDelaysProvider):
        return f"hedge delay at the end: {delays.delay(dar.get(PATH)) * 1000:.1f} ms"
    return ""


VARIANTS = [
    Variant("a", "single attempt", dar.single_attempt_strategy),
    Variant(
        "b",
        "parallel x2, constant 20 ms",
        lambda: dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.02)),
    ),
    Variant("c", "parallel x2, Percentile (defaults)", adaptive(dar.PercentileDelaysProvider), learned_delay),
    Variant(
        "d",
        "parallel x2, Percentile min 5 ms",
        adaptive(lambda: dar.PercentileDelaysProvider(min_delay_seconds=0.005)),
        learned_delay,
    ),
    Variant("e", "aio-request: single attempt", aio_request.single_attempt_strategy, aio=True),
    Variant(
        "f",
        "aio-request: parallel x2, constant 20 ms",
        lambda: aio_request.parallel_strategy(
            attempts_count=2, delays_provider=aio_request.constant_delays(delay=0.02)
        ),
        aio=True,
    ),
]


class Schedule:
    """Which requests the server makes slow: draw ``i`` of a seeded RNG, by arrival number ``i``."""

    def __init__(self, seed: int, size: int) -> None:
        rng = random.Random(seed)
        self.slow = [rng.random() < SLOW_FRACTION for _ in range(size)]

    def __call__(self, index: int) -> float:
        return SLOW_SECONDS if self.slow[index % len(self.slow)] else FAST_SECONDS

    def slow_among_first(self, count: int) -> int:
        full, rest = divmod(count, len(self.slow))
        return full * sum(self.slow) + sum(self.slow[:rest])


@dataclasses.dataclass
class Result:
    variant: Variant
    latencies: list[float]  # seconds, one per completed logical call
    statuses: dict[int, int]
    server_requests: int
    connections: int
    slow_served: int
    wall: float
    note: str

    @property
    def load(self) -> float:
        return self.server_requests / len(self.latencies) if self.latencies else float("nan")

    def pct(self, q: float) -> float:
        return percentile(sorted(self.latencies), q)


def drive(client: dar.Client, calls: int, threads: int, max_seconds: float) -> tuple[list[float], dict[int, int]]:
    """Make ``calls`` GETs from ``threads`` caller threads (stopping after ``max_seconds``)."""
    lock = threading.Lock()
    next_call = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.monotonic() + max_seconds

    def caller() -> None:
        nonlocal next_call
        while time.monotonic() < stop_at:
            with lock:
                if next_call >= calls:
                    return
                next_call += 1
            started = time.perf_counter()
            with client.request(dar.get(PATH)) as response:
                response.read()
                status = response.status
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

    workers = [threading.Thread(target=caller, name=f"caller-{n}", daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=max_seconds + 30)
    return latencies, statuses


def settle(server: BenchServer, quiet: float = 0.1, at_most: float = 2.0) -> None:
    """Wait until the server has read no new request for ``quiet`` seconds (``at_most`` in all)."""
    give_up = time.monotonic() + at_most
    seen = server.requests
    while time.monotonic() < give_up:
        time.sleep(quiet)
        now = server.requests
        if now == seen:
            return
        seen = now


async def drive_aio(
    client: aio_request.Client, calls: int, tasks: int, max_seconds: float
) -> tuple[list[float], dict[int, int]]:
    """As :func:`drive`, with aio-request: ``calls`` GETs from ``tasks`` concurrent asyncio tasks."""
    remaining = calls
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.monotonic() + max_seconds

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < stop_at:
            remaining -= 1
            started = time.perf_counter()
            async with client.request(aio_request.get(PATH)) as response:
                await response.read()
                status = response.status
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(caller() for _ in range(tasks)))
    return latencies, statuses


async def _measure_aio(
    variant: Variant, server: BenchServer, args: argparse.Namespace
) -> tuple[list[float], dict[int, int], float]:
    async with aiohttp.ClientSession() as session:
        client = aio_request.setup(
            transport=aio_request.AioHttpTransport(session),
            endpoint=server.url,
            safe_method_strategy=variant.strategy(),
            timeout=20.0,
        )
        if args.warmup:
            await drive_aio(client, args.warmup, args.threads, args.max_seconds)
            await asyncio.to_thread(settle, server)
        server.reset()
        started = time.monotonic()
        latencies, statuses = await drive_aio(client, args.calls, args.threads, args.max_seconds)
        wall = time.monotonic() - started
        await asyncio.to_thread(settle, server)  # hedges cancelled late may still reach the server
    return latencies, statuses, wall


def run_variant(variant: Variant, server: BenchServer, schedule: Schedule, args: argparse.Namespace) -> Result:
    strategy = None
    if variant.aio:
        latencies, statuses, wall = asyncio.run(_measure_aio(variant, server, args))
    else:
        strategy = variant.strategy()
        client = dar.setup(endpoint=server.url, safe_method_strategy=strategy)
        try:
            if args.warmup:
                drive(client, args.warmup, args.threads, args.max_seconds)
                settle(server)  # no warm-up hedge may still reach the server after the reset
            server.reset()
            started = time.monotonic()
            latencies, statuses = drive(client, args.calls, args.threads, args.max_seconds)
            wall = time.monotonic() - started
        finally:
            client.close()  # waits for hedges still running, so the server has read all it will
    served = server.requests
    return Result(
        variant=variant,
        latencies=latencies,
        statuses=statuses,
        server_requests=served,
        connections=server.connections,
        slow_served=schedule.slow_among_first(served),
        wall=wall,
        note=variant.describe(strategy) if strategy is not None else "",
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(
        f"  {'variant':<46}{'p50 ms':>8}{'p99 ms':>8}{'p99.9':>8}{'max':>8}{'mean':>8}"
        f"{'calls':>7}{'server':>8}{'load':>7}{'slow':>6}{'conns':>7}{'wall s':>8}"
    )
    for r in results:
        print(
            f"  ({r.variant.key}) {r.variant.label:<42}{ms(r.pct(50))}{ms(r.pct(99))}{ms(r.pct(99.9))}"
            f"{ms(max(r.latencies, default=float('nan')))}{ms(statistics.fmean(r.latencies) if r.latencies else 0)}"
            f"{len(r.latencies):>7}{r.server_requests:>8}{r.load:>7.3f}{r.slow_served:>6}{r.connections:>7}{r.wall:>8.1f}"
        )
    print("  (server = requests the server read, load = server / calls, slow = how many of them were 500 ms ones,")
    print("   conns = connections opened: a cancelled attempt's connection is shut down, so hedging reopens some)")
    for r in results:
        other = {s: n for s, n in r.statuses.items() if s != 200}
        if other:
            print(f"  ({r.variant.key}) non-200 responses: {other}")
        if len(r.latencies) < args.calls:
            print(f"  ({r.variant.key}) only {len(r.latencies)} of {args.calls} calls done: --max-seconds reached")
        if r.note:
            print(f"  ({r.variant.key}) {r.note}")
    singles = {False: "a", True: "e"}  # each hedged variant against the single attempt of its library
    print()
    print(f"  targets: hedged p99 <= {TARGET_P99_RATIO:.2f} x single p99, load <= {TARGET_LOAD:.2f}")
    print("  (a-d: this project, against (a); e-f: the anchor aio-request, against (e))")
    for r in results:
        single = next((o for o in results if o.variant.key == singles[r.variant.aio]), None)
        if single is None or r is single:
            continue
        ratio = r.pct(99) / single.pct(99)
        ratio_999 = r.pct(99.9) / single.pct(99.9)
        ok = ratio <= TARGET_P99_RATIO and r.load <= TARGET_LOAD
        print(
            f"  ({r.variant.key}) p99 {ratio:.3f}x single ({'met' if ratio <= TARGET_P99_RATIO else 'MISSED'}), "
            f"load {r.load:.3f} ({'met' if r.load <= TARGET_LOAD else 'MISSED'}), "
            f"p99.9 {ratio_999:.3f}x single -> {'MET' if ok else 'MISSED'}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="measured logical GETs per variant (default 1000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured calls per variant first (default 200)")
    parser.add_argument("--threads", type=int, default=4, help="concurrent caller threads (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the slow/fast sequence (default 1)")
    parser.add_argument("--variants", default="abcdef", help="which variants to run, e.g. 'ab' (default abcdef)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop a variant's calls after this long")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 0 or not 1 <= args.threads <= 16 or args.max_seconds <= 0:
        parser.error("--calls must be >= 1, --warmup >= 0, --threads 1..16 and --max-seconds > 0")
    unknown = set(args.variants) - {v.key for v in VARIANTS}
    if unknown or not args.variants:
        parser.error(f"--variants takes letters among {''.join(v.key for v in VARIANTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(__doc__.split("\n\n", 1)[0])
    print(
        f"Python {platform.python_version()}, {platform.machine()}; server on 127.0.0.1: "
        f"{SLOW_FRACTION:.0%} of requests take {SLOW_SECONDS * 1000:.0f} ms, "
        f"the rest {FAST_SECONDS * 1000:.0f} ms (seed {args.seed})"
    )
    print(
        f"{args.calls} logical GETs per variant from {args.threads} concurrent caller threads, "
        + (
            f"after {args.warmup} unmeasured warm-up calls per variant (cold start excluded)"
            if args.warmup
            else "without warm-up (cold start included)"
        )
    )
    schedule = Schedule(args.seed, size=max(10_000, 4 * (args.calls + args.warmup)))
    results = []
    with BenchServer(delay_for=schedule) as server:
        for variant in VARIANTS:
            if variant.key in args.variants:
                results.append(run_variant(variant, server, schedule, args))
                print(f"  ({variant.key}) done in {results[-1].wall:.1f} s", flush=True)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

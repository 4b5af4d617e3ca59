"""What the retry budget saves during an outage, and what it costs hedging when all is well.

Part 1, a downstream that fails every request (a threaded HTTP/1.1 server on 127.0.0.1 answering
500 at once): ``--calls`` GETs (default 1,000) from ``--threads`` caller threads (default 4), each
with ``sequential_strategy(attempts_count=3, delays_provider=constant_delays(delay=0))``, made
(a) with the client's default budget (20% of first attempts plus 10 per second, over 10 s) and
(b) with ``retry_budget=None``. Printed: the requests the server read, per call, and the bound the
budget guarantees (``0.2 x firsts + 100 x windows spanned``, see RetryBudget).

Part 2, a healthy downstream with a slow tail (benchmarks/_server.py, as in benchmarks/hedging.py:
5% of requests take 500 ms, the rest 2 ms, the same seeded sequence for every variant):
``--calls`` GETs with (c) a single attempt, (d) ``parallel_strategy(attempts_count=2,
delays_provider=constant_delays(delay=0.02))`` without a budget, (e) the same with the default
budget and (f) with the default budget and ``hedge_priority="lower"``. Each variant first makes
``--warmup`` unmeasured calls (default 200). Printed: p50/p99 per call, the server's load
(requests read / calls) and the hedged p99 as a share of the single attempt's; the budget should
leave hedging's gain intact (a 5% tail needs about 5% of extra requests, well within 20%);
"refused" is the hedges the budget refused during the measured calls.

    .venv/bin/python -m benchmarks.budget [--calls 1000] [--threads 4] [--warmup 200] [--seed 1]
"""

import argparse
import contextlib
import math
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import django_aio_request as dar
from benchmarks._server import BenchServer
from benchmarks._stats import percentile
from benchmarks.hedging import SLOW_FRACTION, SLOW_SECONDS, Schedule, drive, settle

PATH = "item"


class _Failing(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "FailingServer"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.count()
        self.send_response(500)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"down")


class FailingServer(ThreadingHTTPServer):
    """Answers every GET with 500 at once and counts them."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 512

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Failing)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"
        self.requests = 0
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def count(self) -> None:
        with self._lock:
            self.requests += 1


@contextlib.contextmanager
def failing_server() -> Iterator[FailingServer]:
    server = FailingServer()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def outage(budgeted: bool, args: argparse.Namespace) -> tuple[int, int, float, int]:
    """(requests the server read, calls told budget_exhausted, seconds, bound) for one run."""
    exhausted = 0
    lock = threading.Lock()
    with failing_server() as server:
        strategy = dar.sequential_strategy(attempts_count=3, delays_provider=dar.constant_delays(delay=0.0))
        options: dict[str, Any] = {} if budgeted else {"retry_budget": None}
        client = dar.setup(endpoint=server.url, safe_method_strategy=strategy, **options)
        calls = iter(range(args.calls))

        def caller() -> None:
            nonlocal exhausted
            while True:
                with lock:
                    if next(calls, None) is None:
                        return
                with client.request(dar.get(PATH)) as response:
                    if response.budget_exhausted:
                        with lock:
                            exhausted += 1

        started = time.monotonic()
        threads = [threading.Thread(target=caller, daemon=True) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        client.close()
        windows = math.ceil((math.floor(elapsed) + 2) / 10)  # one-second buckets, 10 s windows
        bound = math.floor(args.calls * 1.2 + 100 * windows)
        return server.requests, exhausted, elapsed, bound


Variant = tuple[str, str, Callable[[str], dar.Client]]


def hedged(**options: Any) -> Callable[[str], dar.Client]:
    def make(url: str) -> dar.Client:
        strategy = dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.02))
        return dar.setup(endpoint=url, safe_method_strategy=strategy, **options)

    return make


VARIANTS: list[Variant] = [
    ("c", "single attempt", lambda url: dar.setup(endpoint=url, safe_method_strategy=dar.single_attempt_strategy())),
    ("d", "parallel x2, 20 ms, no budget", hedged(retry_budget=None)),
    ("e", "parallel x2, 20 ms, default budget", hedged()),
    ("f", "as (e), hedge_priority='lower'", hedged(hedge_priority="lower")),
]


def tail(
    make: Callable[[str], dar.Client], server: BenchServer, args: argparse.Namespace
) -> tuple[list[float], int, int | None]:
    """(sorted latencies, requests the server read, hedges the budget refused or None without one)."""
    client = make(server.url)
    try:
        if args.warmup:
            drive(client, args.warmup, args.threads, 60.0)
            settle(server)
        server.reset()
        before = client.retry_budget.refused if client.retry_budget is not None else 0
        latencies, _statuses = drive(client, args.calls, args.threads, 60.0)
    finally:
        client.close()
    refused = client.retry_budget.refused - before if client.retry_budget is not None else None
    return sorted(latencies), server.requests, refused


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="calls per run (default 1000)")
    parser.add_argument("--threads", type=int, default=4, help="concurrent caller threads (default 4)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured calls per tail variant (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the slow/fast sequence (default 1)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 0 or not 1 <= args.threads <= 16:
        parser.error("--calls must be >= 1, --warmup >= 0 and --threads 1..16")
    print(__doc__.split("\n\n", 1)[0])
    print(f"Python {platform.python_version()}, {platform.machine()}; {args.calls} calls, {args.threads} threads")

    print("\nPart 1: a downstream that fails every request, 3 sequential attempts per call")
    print(f"  {'run':<28}{'requests':>10}{'per call':>10}{'exhausted':>11}{'seconds':>9}{'bound':>8}")
    runs = {}
    for key, label, budgeted in (("a", "default budget", True), ("b", "no budget", False)):
        sent, exhausted, elapsed, bound = outage(budgeted, args)
        runs[key] = sent
        shown = str(bound) if budgeted else "-"
        print(
            f"  ({key}) {label:<24}{sent:>10}{sent / args.calls:>10.2f}{exhausted:>11}{elapsed:>9.1f}{shown:>8}",
            flush=True,
        )
    print(f"  with / without budget: {runs['a'] / runs['b']:.3f}x the requests")

    print(
        f"\nPart 2: a healthy downstream, {SLOW_FRACTION:.0%} of requests take {SLOW_SECONDS * 1000:.0f} ms "
        f"(seed {args.seed}), after {args.warmup} warm-up calls per variant"
    )
    print(f"  {'variant':<40}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'load':>7}{'refused':>9}{'p99 / single':>14}")
    schedule = Schedule(args.seed, size=max(10_000, 4 * (args.calls + args.warmup)))
    results: dict[str, tuple[list[float], int, int | None]] = {}
    with BenchServer(delay_for=schedule) as server:
        for key, label, make in VARIANTS:
            latencies, served, refused = tail(make, server, args)
            results[key] = (latencies, served, refused)
            single = percentile(results["c"][0], 99)
            p99 = percentile(latencies, 99)
            print(
                f"  ({key}) {label:<36}{ms(percentile(latencies, 50))}{ms(p99)}{ms(latencies[-1])}"
                f"{served / len(latencies):>7.3f}{'-' if refused is None else refused:>9}{p99 / single:>14.3f}",
                flush=True,
            )
    without, with_budget = percentile(results["d"][0], 99), percentile(results["e"][0], 99)
    print(f"  hedged p99 with budget / without: {with_budget / without:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a hedge that never fires spends its time: the hedged call built up from a single attempt, step by step.

``benchmarks/overhead.py`` measures a hedged call whose hedge never fires against a single attempt
(issue 16's goal: at most 1.05x). This splits that difference. Seven clients call the same local
keep-alive server (benchmarks/_server.py, in a child process unless ``--server thread``), each with
breaker and metrics on, each adding one step of the parallel strategy (strategies/parallel.py) to
the one before:

1. ``single``: ``single_attempt_strategy()``;
2. ``+ cancellation``: attempt 0 takes a ``Cancellation``, which the transport watches (it can abort
   the attempt's socket, and tell whether its answer arrived);
3. ``+ releasable read``: the cancellation's ``release_after`` set a second ahead, as the hedge's time:
   the transport arms the read of the answer, so that a hedge that wins could give the connection to
   the drainer (transport/releasable_socket.py);
4. ``+ call state``: the parallel strategy's per-call state made (``_HedgedCall``: its lock, its
   cancellation, the caller's context) and attempt 0 run through it;
5. ``+ hedge timer``: the hedge put on the strategy's clock (strategies/hedge_clock.py) and taken
   back once attempt 0 is answered;
6. ``parallel, no stragglers rule``: ``parallel_strategy(attempts_count=2, stragglers_only=False)``,
   a constant delay of 1 s: the whole strategy (the attempts' times from the delays provider) but
   the stragglers rule;
7. ``parallel``: the same with the stragglers rule on (the default): each call also noted in its
   method and URL template's pace (strategies/stragglers.py).

Steps 2-5 are made here from the strategy's parts, to be measured alone; 6 and 7 are what users run.

Every round runs each client in a new random order, each right after a raw ``requests`` call (a call
runs after other code, as in a service: its code and data partly out of the CPU's caches) and then
once more right after itself. The raw calls are timed too: their p50 is printed as the anchor.
Figures per client: p50 of both, and the median over rounds of its time minus ``single``'s in the
same round ("+ µs"), for both; "step" is what that client adds to the one above it. The steps' costs
depend on what ran before: on the thirty-fourth VM the two measured both ways cost 2.5-6 times what
they cost in a loop that runs only them (docs/benchmarks.md).

    .venv/bin/python -m benchmarks.hedge_parts [--max-seconds 60] [--warmup 500] [--server process|thread]
"""

import argparse
import gc
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import requests

import django_aio_request as dar
from benchmarks.overhead import HEDGE_DELAY, breaker, client_call, raw_call, server_url
from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.strategies.base import RequestStrategy, ResponseWithVerdict, SendAttempt, first_attempt
from django_aio_request.strategies.hedge_clock import HedgeClock
from django_aio_request.strategies.parallel import _HedgedCall


class _WithCancellation(RequestStrategy):
    """Step 2: a single attempt that takes a cancellation (never raised)."""

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        return first_attempt(send(request, deadline, priority, 0, Cancellation()))


class _WithReleasableRead(RequestStrategy):
    """Step 3: as step 2, the read of the answer armed to be released from the hedge's time on."""

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        cancellation = Cancellation()
        cancellation.release_after = time.monotonic() + HEDGE_DELAY
        return first_attempt(send(request, deadline, priority, 0, cancellation))


class _WithCallState(RequestStrategy):
    """Step 4: attempt 0 run through the parallel strategy's per-call state, no hedge scheduled."""

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        call = _HedgedCall(send, request, deadline, priority, None)
        call.first.release_after = time.monotonic() + HEDGE_DELAY
        return first_attempt(call.run_first())


class _WithHedgeTimer(RequestStrategy):
    """Step 5: as step 4, the hedge put on a clock at its time and taken back once attempt 0 is answered."""

    def __init__(self) -> None:
        self._clock = HedgeClock()

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        call = _HedgedCall(send, request, deadline, priority, None)
        started = time.monotonic()
        due = [started, started + HEDGE_DELAY]
        call.start_timer(workers, due.__getitem__, 2, pace=None, started=started, clock=self._clock)
        result = first_attempt(call.run_first())
        if not call.ended_alone(result.response):
            raise RuntimeError("the hedge fired: the server answered later than the hedge's time")
        return result


def _parallel(*, stragglers_only: bool) -> RequestStrategy:
    delays = dar.constant_delays(delay=HEDGE_DELAY)
    return dar.parallel_strategy(attempts_count=2, delays_provider=delays, stragglers_only=stragglers_only)


STEPS: tuple[tuple[str, Callable[[], RequestStrategy]], ...] = (
    ("single", dar.single_attempt_strategy),
    ("+ cancellation", _WithCancellation),
    ("+ releasable read", _WithReleasableRead),
    ("+ call state", _WithCallState),
    ("+ hedge timer", _WithHedgeTimer),
    ("parallel, no stragglers rule", lambda: _parallel(stragglers_only=False)),
    ("parallel", lambda: _parallel(stragglers_only=True)),
)


def measure(url: str, *, warmup: int, max_seconds: float, seed: int = 34) -> tuple[dict[str, list[float]], ...]:
    """The times (µs) of each step's call right after a raw call, and right after itself, one of each
    a round; and under ``"raw"`` in the first, the raw calls' own (the anchor)."""
    session = requests.Session()
    raw = raw_call(session, url)
    clients = {
        name: dar.setup(endpoint=url, safe_method_strategy=make(), circuit_breaker=breaker()) for name, make in STEPS
    }
    calls = {name: client_call(client) for name, client in clients.items()}
    after_raw: dict[str, list[float]] = {name: [] for name in calls}
    after_itself: dict[str, list[float]] = {name: [] for name in calls}
    raw_times: list[float] = []
    names = list(calls)
    shuffle = random.Random(seed).shuffle
    clock = time.perf_counter_ns
    try:
        for _ in range(warmup):
            for name in names:
                raw()
                calls[name]()
        gc.collect()
        stop_at = time.monotonic() + max_seconds
        while True:  # one round at least, however short the time
            shuffle(names)
            for name in names:
                call = calls[name]
                before = clock()
                raw()
                began = clock()
                call()
                first = clock()
                call()
                second = clock()
                after_raw[name].append((first - began) / 1000)
                after_itself[name].append((second - first) / 1000)
                raw_times.append((began - before) / 1000)
            if time.monotonic() >= stop_at:
                break
    finally:
        for client in clients.values():
            client.close()
        session.close()
    return {"raw": raw_times, **after_raw}, after_itself


def added(times: dict[str, list[float]], name: str, base: str) -> float:
    """The median over rounds of ``name``'s time minus ``base``'s in the same round."""
    return statistics.median(b - a for a, b in zip(times[base], times[name], strict=True))


def report(after_raw: dict[str, list[float]], after_itself: dict[str, list[float]]) -> None:
    rounds = len(after_raw["single"])
    print(f"{rounds} rounds, each client once right after a raw call and once right after itself")
    print()
    anchor = statistics.median(after_raw["raw"])
    print(f"  anchor: raw requests.Session.get, p50 {anchor:.1f} µs (the calls made before each client's)")
    steps = f"{'+ µs':>8}{'step':>8}"
    print(f"  {'µs per call':<30}{'after raw: p50':>15}{steps}{'after itself: p50':>19}{steps}")
    previous = {"raw": 0.0, "itself": 0.0}
    for name, _ in STEPS:
        row = f"  {name:<30}"
        for label, times in (("raw", after_raw), ("itself", after_itself)):
            total = added(times, name, "single")
            row += f"{statistics.median(times[name]):>{15 if label == 'raw' else 19}.1f}{total:>+8.1f}"
            row += f"{total - previous[label]:>+8.1f}"
            previous[label] = total
        print(row)
    whole = statistics.median(after_raw["parallel"]) / statistics.median(after_raw["single"])
    print()
    print(f"  parallel / single, p50 after a raw call: {whole:.3f}x (issue 16's goal: at most 1.05x)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="how long to measure (default 60 s)")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured rounds first (default 500)")
    parser.add_argument("--server", choices=("process", "thread"), default="process", help="where the server runs")
    args = parser.parse_args(argv)
    if args.max_seconds <= 0 or args.warmup < 0:
        parser.error("--max-seconds must be > 0 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(__doc__.split("\n\n", 1)[0])
    print(f"Python {platform.python_version()}, requests {requests.__version__}, server: {args.server} on 127.0.0.1")
    print()
    with server_url(args.server, None) as url:
        after_raw, after_itself = measure(url, warmup=args.warmup, max_seconds=args.max_seconds)
    report(after_raw, after_itself)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hedging against a downstream that is itself the bottleneck: are hedges shed first, and do they stop
while the learned delay says the downstream is saturated?

``benchmarks/load.py`` measures hedging where the caller's CPU runs out first; there the downstream
never saturates, so neither safety rule has anything to do. Here the downstream runs out first:

* billing: ``benchmarks/_shedding_service.py`` under gunicorn, one gthread worker with ``--threads``
  (4) threads (``--worker priority``: PriorityThreadWorker, gthread with its queue by priority),
  load shedding on with nothing but ``"SHEDDING": True`` (its limit learned). Its
  ``/tail`` view spends ``--cpu-ms`` (3) ms of CPU, and ``--slow`` (5%) of its requests then sleep
  ``--slow-ms`` (150) ms: a slow tail that hedging exists for, on a server that CPU bounds.
* the caller: this process, one client per run (fresh learned delays and retry budget), a 1 s
  deadline, GETs at normal priority; open loop: call ``k`` is due at a fixed time, runs on one of
  ``--callers`` (64) threads, and its latency counts from when it was due.

First a calibration: ``--calibrate-seconds`` (4) s of single attempts in a closed loop from
``2 x --threads`` callers, the capacity C (calls answered 200 a second). Then for each load in ``--loads``
(0.5, 1.0, 1.5 of C), three runs in an order that turns round from load to load (ABC, CBA, ...),
billing restarted for each (its learned limit fresh):

* ``single``: one attempt;
* ``hedged``: 2 attempts, the second after the p90 of recent latencies but not before 20 ms,
  ``hedge_priority="lower"`` (hedges go at low priority), the default retry budget, and
  ``saturation_ratio=2`` (no hedges while the 75th percentile of the latencies is above twice its
  lowest and above half the 20 ms floor);
* ``hedged, no ratio``: the same without ``saturation_ratio``: what the ratio holds back.

Each run: ``--billing-warmup`` (2) s at half of C from another client (billing's own start: its
limit probing, some refusals; learned from, they would hold the hedge delay at the 150 ms tail for
2,000 calls), then ``--warmup`` (3) s at half of C (billing learns its limit, the client its delay,
both unloaded), then ``--seconds`` (8) measured at the run's load. Figures: calls answered 200
within the deadline (ok) and their p50/p99 from when they were due; hedges per call and budget
refusals (the client's ``aio_request_attempts_total{attempt="1"}`` and
``aio_request_retry_budget_exhausted_total``); billing's 503s (``aio_request_server_shed_total``) at
normal priority per first attempt and at low priority per hedge: a hedge is shed first when its
share is the larger; "held" is the share of samples (every 0.1 s) in which ``saturation_ratio`` held
the hedge back.

    .venv/bin/python -m benchmarks.hedge_safety [--loads 0.5,1.0,1.5] [--seconds 8] [--warmup 3] [--threads 4]
        [--cpu-ms 3] [--slow 0.05] [--slow-ms 150] [--callers 64] [--calibrate-seconds 4] [--billing-warmup 2]
"""

import argparse
import contextlib
import dataclasses
import http.client
import os
import platform
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import django_aio_request as dar
from benchmarks._shedding_load import server
from benchmarks._stats import percentile

DEADLINE = 1.0
WARMUP_LOAD = 0.5
SAMPLE_EVERY = 0.1
VARIANTS = ("single", "hedged", "hedged, no ratio")


@dataclasses.dataclass
class Run:
    variant: str
    load: float
    rate: float
    seconds: float
    latencies: list[float]  # calls answered 200, from when each was due
    calls: int = 0
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    hedges: float = 0.0
    budget_refused: float = 0.0
    shed: dict[str, float] = dataclasses.field(default_factory=dict)  # billing's 503s by priority
    held: int = 0
    samples: int = 0
    limits: list[float] = dataclasses.field(default_factory=list)  # billing's learned limit, sampled

    @property
    def ok(self) -> int:
        return len(self.latencies)


def billing_samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/metrics", headers={"X-Request-Priority": "high"})
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def total(samples: Sequence[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, got, v in samples if n == name and all(got.get(k) == w for k, w in labels.items()))


def caller_total(name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == w for k, w in labels.items())
    )


def make_client(
    variant: str, url: str, stragglers_only: bool = True
) -> tuple[dar.Client, dar.PercentileDelaysProvider | None]:
    if variant == "single":
        return dar.setup(endpoint=url, safe_method_strategy=dar.single_attempt_strategy(), timeout=DEADLINE), None
    delays = dar.PercentileDelaysProvider(
        percentile=0.9, min_delay_seconds=0.02, saturation_ratio=2.0 if variant == "hedged" else None
    )
    strategy = dar.parallel_strategy(attempts_count=2, delays_provider=delays, stragglers_only=stragglers_only)
    client = dar.setup(endpoint=url, safe_method_strategy=strategy, timeout=DEADLINE, hedge_priority="lower")
    return client, delays


def call(client: dar.Client, path: str) -> int:
    try:
        with client.request(dar.get(path)) as response:
            return response.status
    except Exception:  # the client promises not to raise; if it does, count it
        return -1


def open_loop(
    client: dar.Client, path: str, rate: float, seconds: float, callers: int
) -> tuple[list[float], dict[int, int], int]:
    """Calls due every ``1 / rate`` s for ``seconds``: latencies of the 200s, statuses, calls made."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def one(due: float) -> None:
        status = call(client, path)
        took = time.monotonic() - due
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200 and took <= DEADLINE:
                latencies.append(took)

    count = int(rate * seconds)
    start = time.monotonic() + 0.05
    with ThreadPoolExecutor(max_workers=callers) as pool:
        for k in range(count):
            due = start + k / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            pool.submit(one, due)
    return latencies, statuses, count


def closed_loop(client: dar.Client, path: str, seconds: float, callers: int) -> int:
    """Calls answered 200 in ``seconds`` by ``callers`` threads each calling again when answered."""
    served = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            if call(client, path) == 200:
                with lock:
                    served[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return served[0]


class Sampler(threading.Thread):
    """Every 0.1 s: whether the saturation ratio holds the hedge back, and billing's learned limit."""

    def __init__(self, delays: dar.PercentileDelaysProvider | None, request: dar.Request, url: str) -> None:
        super().__init__(daemon=True)
        self.delays, self.request, self.url = delays, request, url
        self.stopped = threading.Event()
        self.held = self.samples = 0
        self.limits: list[float] = []

    def run(self) -> None:
        ticks = 0
        while not self.stopped.wait(SAMPLE_EVERY):
            ticks += 1
            if self.delays is not None and self.delays.saturation_ratio is not None:
                self.samples += 1
                self.held += self.delays.saturated(self.request)
            if ticks % 5 == 0:
                with contextlib.suppress(OSError):
                    self.limits.append(total(billing_samples(self.url), "aio_request_server_concurrency_limit"))


#: ``--worker``: the kind of ``benchmarks/_shedding_load.py``'s ``server()``
WORKER_KINDS = {"gthread": "gunicorn", "priority": "gunicorn-priority"}


def measure(variant: str, load: float, capacity: float, args: argparse.Namespace, config: dict[str, Any]) -> Run:
    path = f"tail?ms={args.cpu_ms:g}&slow={args.slow:g}&slow_ms={args.slow_ms:g}"
    with server(WORKER_KINDS[args.worker], args.threads, config) as url:
        # Billing's first second (its limit probing at 1, refusing) is slow: a client that learned
        # from it would hedge only after its 150 ms tail until 2,000 newer calls pushed it out. The
        # measured client meets a billing that is already running, as callers in service do.
        starter, _ = make_client("single", url + "/")
        try:
            open_loop(starter, path, WARMUP_LOAD * capacity, args.billing_warmup, args.callers)
        finally:
            starter.close()
        client, delays = make_client(variant, url + "/", args.stragglers_only)
        try:
            open_loop(client, path, WARMUP_LOAD * capacity, args.warmup, args.callers)
            hedges = caller_total("aio_request_attempts_total", request_endpoint=url + "/", attempt="1")
            refused = caller_total("aio_request_retry_budget_exhausted_total", request_endpoint=url + "/")
            before = billing_samples(url)
            sampler = Sampler(delays, dar.get(path), url)
            sampler.start()
            latencies, statuses, count = open_loop(client, path, load * capacity, args.seconds, args.callers)
            sampler.stopped.set()
            sampler.join()
            after = billing_samples(url)
            run = Run(variant, load, load * capacity, args.seconds, latencies, count, statuses)
            run.hedges = caller_total("aio_request_attempts_total", request_endpoint=url + "/", attempt="1") - hedges
            run.budget_refused = (
                caller_total("aio_request_retry_budget_exhausted_total", request_endpoint=url + "/") - refused
            )
            for priority in ("normal", "low"):
                shed = "aio_request_server_shed_total"
                run.shed[priority] = total(after, shed, priority=priority) - total(before, shed, priority=priority)
            run.held, run.samples, run.limits = sampler.held, sampler.samples, sampler.limits
            return run
        finally:
            client.close()


def calibrate(args: argparse.Namespace, config: dict[str, Any]) -> float:
    path = f"tail?ms={args.cpu_ms:g}&slow={args.slow:g}&slow_ms={args.slow_ms:g}"
    seconds: float = args.calibrate_seconds
    with server(WORKER_KINDS[args.worker], args.threads, config) as url:
        client, _ = make_client("single", url + "/")
        try:
            closed_loop(client, path, 1.0, 2 * args.threads)
            return closed_loop(client, path, seconds, 2 * args.threads) / seconds
        finally:
            client.close()


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def report(run: Run) -> None:
    ordered = sorted(run.latencies)
    p50, p99 = percentile(ordered, 50) * 1000, percentile(ordered, 99) * 1000
    held = share(run.held, run.samples) if run.samples else "    -"
    limit = f"{min(run.limits):g}-{max(run.limits):g}" if run.limits else "-"
    others = {s: n for s, n in sorted(run.statuses.items()) if s != 200}
    print(
        f"| {run.load:g}x | {run.variant} | {run.rate:.0f} | {share(run.ok, run.calls)} | {p50:.1f} | {p99:.1f} | "
        f"{run.hedges / max(run.calls, 1):.3f} | {run.budget_refused:.0f} | "
        f"{share(run.shed['normal'], run.calls)} | {share(run.shed['low'], run.hedges)} | {held} | {limit} | "
        f"{others or '-'} |",
        flush=True,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", default="0.5,1.0,1.5", help="loads, as shares of the capacity (0.5,1.0,1.5)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds a run (8)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds at 0.5 C first (3)")
    parser.add_argument("--threads", type=int, default=4, help="billing's gthread threads (4)")
    parser.add_argument(
        "--calibrate-seconds", type=float, default=4.0, help="seconds of the closed loop that measures C (4)"
    )
    parser.add_argument(
        "--billing-warmup", type=float, default=2.0, help="seconds at 0.5 C from another client at billing's start (2)"
    )
    parser.add_argument(
        "--worker",
        choices=tuple(WORKER_KINDS),
        default="gthread",
        help="billing's gunicorn worker: gthread, or priority (PriorityThreadWorker: its queue by priority)",
    )
    parser.add_argument("--cpu-ms", type=float, default=3.0, help="CPU ms a billing request spends (3)")
    parser.add_argument("--slow", type=float, default=0.05, help="share of billing's requests that then sleep (0.05)")
    parser.add_argument("--slow-ms", type=float, default=150.0, help="how long they sleep, ms (150)")
    parser.add_argument("--callers", type=int, default=64, help="caller threads (64)")
    parser.add_argument(
        "--stragglers-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hedged clients hedge only calls younger calls passed (default: on)",
    )
    args = parser.parse_args(argv)
    try:
        args.loads = [float(x) for x in args.loads.split(",")]
    except ValueError:
        parser.error("--loads is numbers separated by commas")
    if (
        not all(0 < x <= 5 for x in args.loads)
        or not 0 < args.seconds <= 600
        or not 0 < args.warmup <= 60
        or not 0 < args.calibrate_seconds <= 60
        or not 0 < args.billing_warmup <= 60
        or not 1 <= args.threads <= 128
        or not 0 <= args.cpu_ms <= 1000
        or not 0 <= args.slow <= 1
        or not 0 <= args.slow_ms <= 5000
        or not 1 <= args.callers <= 1024
    ):
        parser.error("an option is out of range (see --help)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config: dict[str, Any] = {"shedding": True}
    print(__doc__.split("\n\n", 1)[0])
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {platform.python_version()}, {os.cpu_count()} "
        f"CPUs, load average {Path('/proc/loadavg').read_text().split()[0]}; billing: gunicorn {args.worker} 1 x "
        f"{args.threads} threads, SHEDDING True, {args.cpu_ms:g} ms CPU a request, {args.slow:.0%} then sleep "
        f"{args.slow_ms:g} ms; {args.callers} caller threads, {DEADLINE:g} s deadline, {args.seconds:g} s a run; "
        f"hedged clients' stragglers_only {args.stragglers_only}"
    )
    capacity = calibrate(args, config)
    print(f"capacity C (single attempts, closed loop, {2 * args.threads} callers): {capacity:.1f} calls/s\n")
    print(
        "| load | variant | calls/s | ok | p50 ms | p99 ms | hedges/call | budget refused | "
        "shed normal / first attempts | shed low / hedges | held | billing limit | other answers |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, load in enumerate(args.loads):
        for variant in VARIANTS if n % 2 == 0 else VARIANTS[::-1]:
            report(measure(variant, load, capacity, args, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

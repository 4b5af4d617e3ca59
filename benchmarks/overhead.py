"""Per-call overhead of the client over plain ``requests``, on a local keep-alive server.

What is measured: the wall time of one GET that gets a tiny ``200 ok`` from a local keep-alive
HTTP/1.1 server (benchmarks/_server.py), made two ways over the same server:

* raw:    ``session.get(url).content`` on a ``requests.Session`` (its own keep-alive connection);
* client: ``with client.request(get("ping")) as response: response.read()``, on a client with a
  single attempt strategy for GET and the circuit breaker on (``DefaultCircuitBreaker(
  break_duration=1, sampling_duration=10, minimum_throughput=10, failure_threshold=0.5)``),
  so every call passes the deadline, strategy, low-timeout, breaker and transport stages.

The same run also makes the client call on a second client built with ``metrics=False`` (no
Prometheus metrics recorded; the first records them, as clients do by default): ``metrics on/off``
is the ratio of the two, target under 1.05x at p50 (docs/metrics.md). A call only queues what it
records; a background thread records it (django_aio_request/deferred_observations.py). That
thread's CPU is measured apart and printed too: as many calls' worth queued and recorded.

The variants are interleaved in one run, after a warm-up, so that CPU frequency changes, other
processes and GC hit all alike. Each round runs every variant twice in a row, the variants in a new
random order: a call's time depends on what ran just before it (its code and data still in the CPU's
caches or not: 30-40 µs of a 320-560 µs call), and a fixed order (raw, client, client without metrics,
hedged, rotated) always put the client after raw's code and the client without metrics and the
hedged client after the client's own, which made metrics look 5% dearer and a hedge 7% cheaper than
they are. The second call of each pair ran right after itself ("warm"); the first ran after another
variant. Two variants are compared both ways: warm against warm, and each right after the other
(the client after a raw call against a raw call after the client: "cold"). A target is judged on
the worse of the two.

How to read it: p50 is the typical call, p99 its tail. ``client/raw`` is the ratio of the same
percentile of the two series; the target is a client p50 at most 0.60x raw (issue 16). "Overhead per call"
is the median over pairs of (client - raw) of the same pair, the most noise-proof figure of what
the client adds in absolute terms; the ratio depends on how fast the server answers (a real
service taking milliseconds dilutes the same microseconds to nothing), the microseconds do not.

By default the server runs in a child process (``--server process``), as a real downstream
service would, so its Python work does not compete with the caller for the GIL; ``--server
thread`` runs it in this process. When the p50 ratio misses the target (or with ``--breakdown``)
a second interleaved run splits the overhead between the transport and the layers above it;
``--profile`` prints a cProfile top-10 of client calls.

``--body-size N`` makes the server answer N bytes instead of 2; ``--post-size N`` makes every call
a POST of N bytes instead of a GET (a POST is never hedged, so the hedged row is a single attempt).

    .venv/bin/python -m benchmarks.overhead [--pairs 15000] [--warmup 1000] [--breakdown] [--profile]
        [--body-size N] [--post-size N]
"""

import argparse
import contextlib
import cProfile
import gc
import io
import math
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import requests

import django_aio_request as dar
from benchmarks._server import BenchServer, serve_in_subprocess
from benchmarks._stats import percentile
from django_aio_request import metrics as all_metrics
from django_aio_request.metrics import client as client_metrics
from django_aio_request.metrics import prometheus

TARGET_P50_RATIO = 0.60
TARGET_METRICS_P50_RATIO = 1.05
TARGET_HEDGED_P50_RATIO = 1.05
#: A hedge delay no call on loopback reaches: the hedge is scheduled and never fires.
HEDGE_DELAY = 1.0
PATH = "ping"

Call = Callable[[], object]


def breaker() -> dar.DefaultCircuitBreaker[str, dar.Response]:
    return dar.DefaultCircuitBreaker(
        break_duration=1, sampling_duration=10, minimum_throughput=10, failure_threshold=0.5
    )


def make_client(url: str, *, with_breaker: bool = True, metrics: bool = True, hedged: bool = False) -> dar.Client:
    strategy = (
        dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=HEDGE_DELAY))
        if hedged
        else dar.single_attempt_strategy()
    )
    return dar.setup(
        endpoint=url,
        safe_method_strategy=strategy,
        circuit_breaker=breaker() if with_breaker else None,
        metrics=metrics,
    )


def raw_call(session: requests.Session, url: str, payload: bytes | None = None) -> Call:
    target = url + PATH

    def call() -> object:
        response = session.get(target) if payload is None else session.post(target, data=payload)
        if response.status_code != 200:
            raise RuntimeError(f"raw call got {response.status_code}")
        return response.content

    return call


def client_call(client: dar.Client, payload: bytes | None = None) -> Call:
    request = dar.get(PATH) if payload is None else dar.post(PATH, body=payload)

    def call() -> object:
        with client.request(request) as response:
            if response.status != 200:
                raise RuntimeError(f"client call got {response.status}")
            return response.read()

    return call


def transport_call(client: dar.Client) -> Call:
    """The client's transport alone: no deadline, strategy, pipeline or breaker above it."""
    transport = client.transport
    endpoint = client.endpoint

    def call() -> object:
        response = transport.send(endpoint, dar.get(PATH), 20.0)
        if response.status != 200:
            raise RuntimeError(f"transport call got {response.status}")
        return response.read()

    return call


def interleaved(calls: Sequence[Call], rounds: int, max_seconds: float) -> tuple[list[list[float]], int]:
    """Run ``calls`` in turn ``rounds`` times (rotating which goes first); their times in microseconds.

    Fair for two calls (each follows itself and the other equally often: middleware.py, resolver.py);
    with more, each always follows the same one: use :func:`in_blocks`.

    Stops early when ``max_seconds`` have passed; returns the times and the rounds done.
    """
    times: list[list[float]] = [[] for _ in calls]
    count = len(calls)
    clock = time.perf_counter_ns
    stop_at = time.monotonic() + max_seconds
    done = 0
    for done in range(1, rounds + 1):
        shift = done % count
        for k in range(count):
            index = (k + shift) % count
            started = clock()
            calls[index]()
            times[index].append((clock() - started) / 1000)
        if done % 256 == 0 and time.monotonic() > stop_at:
            break
    return times, done


class Timings:
    """The times (µs) of :func:`in_blocks`: ``warm[i]``, variant ``i`` right after itself, one a round;
    ``after[i, j]``, variant ``i`` right after variant ``j``."""

    def __init__(self, count: int) -> None:
        self.warm: list[list[float]] = [[] for _ in range(count)]
        self.after: dict[tuple[int, int], list[float]] = {}

    def cold_ratio(self, a: int, b: int) -> float:
        """p50 of ``b`` right after ``a`` over p50 of ``a`` right after ``b``: each just after the other's code."""
        b_after_a = sorted(self.after.get((b, a), []))
        a_after_b = sorted(self.after.get((a, b), []))
        if not b_after_a or not a_after_b:
            return float("nan")  # too few rounds for these two to have followed each other both ways
        return percentile(b_after_a, 50) / percentile(a_after_b, 50)


def in_blocks(calls: Sequence[Call], rounds: int, max_seconds: float, *, seed: int = 16) -> tuple[Timings, int]:
    """Run every call twice in a row, ``rounds`` times, the calls in a new random order each round.

    Stops early when ``max_seconds`` have passed; returns the times and the rounds done. Why twice
    and shuffled: see the module's docstring (a call's time depends on what ran before it).
    """
    timings = Timings(len(calls))
    order = list(range(len(calls)))
    shuffle = random.Random(seed).shuffle
    clock = time.perf_counter_ns
    stop_at = time.monotonic() + max_seconds
    previous = -1
    done = 0
    for done in range(1, rounds + 1):
        shuffle(order)
        for index in order:
            call = calls[index]
            started = clock()
            call()
            first = clock()
            call()
            second = clock()
            if previous >= 0:
                timings.after.setdefault((index, previous), []).append((first - started) / 1000)
            timings.warm[index].append((second - first) / 1000)
            previous = index
        if done % 128 == 0 and time.monotonic() > stop_at:
            break
    return timings, done


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "mean": statistics.fmean(ordered),
    }


def paired_median_difference(a: list[float], b: list[float]) -> float:
    return statistics.median(y - x for x, y in zip(a, b, strict=True))


@contextlib.contextmanager
def server_url(mode: str, body_size: int | None) -> Iterator[str]:
    if mode == "process":
        with serve_in_subprocess(body_size=body_size) as url:
            yield url
    else:
        with BenchServer(body_size=body_size) as server:
            yield server.url


def run_main(args: argparse.Namespace, url: str) -> float:
    """The raw / client / client without metrics / hedged client run (:func:`in_blocks`); returns the
    client/raw p50 ratio the target is judged on (the worse of warm and each after the other)."""
    session = requests.Session()
    client = make_client(url)
    quiet = make_client(url, metrics=False)
    hedged = make_client(url, hedged=True)
    payload = b"p" * args.post_size if args.post_size else None
    calls = [raw_call(session, url, payload), *(client_call(c, payload) for c in (client, quiet, hedged))]
    raw_i, client_i, quiet_i, hedged_i = range(4)
    try:
        in_blocks(calls, args.warmup, args.max_seconds)
        gc.collect()
        started = time.monotonic()
        timings, rounds = in_blocks(calls, args.pairs, args.max_seconds)
        elapsed = time.monotonic() - started
    finally:
        client.close()
        quiet.close()
        hedged.close()
        session.close()
    raw_times, client_times, quiet_times, hedged_times = timings.warm
    r, c, q, hd = summary(raw_times), summary(client_times), summary(quiet_times), summary(hedged_times)
    print(
        f"{rounds} rounds of raw, client, client without metrics and hedged client, each call twice in a row,"
        f" in a random order, after {args.warmup} warm-up rounds, {elapsed:.1f} s"
    )
    if rounds < args.pairs:
        print(f"  (stopped early: --max-seconds {args.max_seconds} reached before {args.pairs} rounds)")
    print()
    columns = ("p50", "p90", "p99", "mean")
    print(f"  {'µs per call, right after itself':<40}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}")
    verb = "post" if payload else "get"
    rows = [
        (f"anchor: raw requests.Session.{verb}", r),
        (f"client client.request({verb}(...))", c),
        ("client, metrics=False", q),
        (f"hedged, 2 attempts, hedge at {HEDGE_DELAY:g} s", hd),
    ]
    for label, row in rows:
        print(f"  {label:<40}" + "".join(f"{row[k]:>9.1f}" for k in columns))
    print(f"  {'ratio client/raw':<40}" + "".join(f"{c[k] / r[k]:>8.3f}x" for k in columns))
    print(f"  {'ratio metrics on/off':<40}" + "".join(f"{c[k] / q[k]:>8.3f}x" for k in columns))
    print(f"  {'ratio hedged (never fires)/single':<40}" + "".join(f"{hd[k] / c[k]:>8.3f}x" for k in columns))
    cold = {
        "client/raw": timings.cold_ratio(raw_i, client_i),
        "metrics on/off": timings.cold_ratio(quiet_i, client_i),
        "hedged/single": timings.cold_ratio(client_i, hedged_i),
    }
    print("  each right after the other, p50: " + ", ".join(f"{name} {ratio:.3f}x" for name, ratio in cold.items()))
    print()
    return report_targets(timings, rounds, cold)


def judged(label: str, warm: float, cold: float, target: float, *, inclusive: bool) -> float:
    """Print the verdict on the worse of the warm ratio and the one of each right after the other."""
    worse = warm if math.isnan(cold) else max(warm, cold)  # nan: too few rounds for the two to follow each other
    met = worse <= target if inclusive else worse < target
    verdict = "MET" if met else "MISSED"
    print(f"  target: {label} -> warm {warm:.3f}x, each after the other {cold:.3f}x: {worse:.3f}x, {verdict}")
    return worse


def report_targets(timings: Timings, rounds: int, cold: dict[str, float]) -> float:
    """The three targets, each judged on its worse ratio; returns the client/raw one."""
    raw_times, client_times, quiet_times, hedged_times = timings.warm
    r, c, q, hd = summary(raw_times), summary(client_times), summary(quiet_times), summary(hedged_times)
    metrics_cost = paired_median_difference(quiet_times, client_times)
    enabled = "" if prometheus.ENABLED else " (prometheus-client is not installed: both record nothing)"
    print(f"  metrics per call (median of on - off over rounds): {metrics_cost:.1f} µs{enabled}")
    print(f"  metrics recording thread, off the call path: {recording_cost(rounds):.1f} µs of CPU per call")
    judged(
        "metrics add under 5% to p50",
        c["p50"] / q["p50"],
        cold["metrics on/off"],
        TARGET_METRICS_P50_RATIO,
        inclusive=False,
    )
    hedged_cost = paired_median_difference(client_times, hedged_times)
    print(f"  hedge that never fires, per call (median of hedged - single over rounds): {hedged_cost:.1f} µs")
    label = f"hedged p50 at most {TARGET_HEDGED_P50_RATIO:.2f}x single"
    judged(label, hd["p50"] / c["p50"], cold["hedged/single"], TARGET_HEDGED_P50_RATIO, inclusive=True)
    overhead = paired_median_difference(raw_times, client_times)
    print(f"  client minus raw per call (median over rounds): {overhead:.1f} µs")
    label = f"client p50 at most {TARGET_P50_RATIO:.2f}x raw"
    return judged(label, c["p50"] / r["p50"], cold["client/raw"], TARGET_P50_RATIO, inclusive=True)


def run_breakdown(args: argparse.Namespace, url: str) -> None:
    """Split the overhead: raw -> the client's transport alone -> client without breaker -> client."""
    session = requests.Session()
    full = make_client(url)
    bare = make_client(url, with_breaker=False)
    labels = [
        "raw requests.Session.get",
        "transport.send() alone",
        "client, no circuit breaker",
        "client, circuit breaker on",
    ]
    calls = [raw_call(session, url), transport_call(full), client_call(bare), client_call(full)]
    rounds = max(1, args.pairs // 4)
    try:
        in_blocks(calls, max(1, args.warmup // 4), args.max_seconds / 2)
        timings, done = in_blocks(calls, rounds, args.max_seconds / 2)
    finally:
        full.close()
        bare.close()
        session.close()
    print()
    print(
        f"Where the time goes: {done} rounds of 4 variants, each twice in a row in a random order"
        " (p50 in µs of the second call; step = p50 minus the row above)"
    )
    previous = None
    for label, series in zip(labels, timings.warm, strict=True):
        p50 = percentile(sorted(series), 50)
        step = "" if previous is None else f"{p50 - previous:+9.1f}"
        print(f"  {label:<34}{p50:>9.1f}{step}")
        previous = p50
    env = environment_settings_cost(url)
    print(f"  (raw requests spends ~{env:.0f} µs of each call in Session.merge_environment_settings, which")
    print("   reads the proxy variables from os.environ every time; the transport reads them once per host,")
    print("   which is why it can be faster than raw: the client's own cost is the rows below it)")
    print("  transport.send() alone = RequestsTransport: deadline guard, deadline timer entry, connection slot,")
    print("  the PreparedRequest and urllib3's urlopen on the direct route (transport/direct_send.py), Response;")
    print("  the client rows add get_context,")
    print("  Deadline, strategy, pipeline modules, system headers (Request.with_headers) and the classifier.")


def environment_settings_cost(url: str, calls: int = 2000) -> float:
    """µs per ``Session.merge_environment_settings`` call, as requests makes one per request."""
    session = requests.Session()
    target = url + PATH
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        for _ in range(calls):
            session.merge_environment_settings(target, {}, None, None, None)
        best = min(best, (time.perf_counter_ns() - started) / calls / 1000)
    session.close()
    return best


def run_profile(args: argparse.Namespace, url: str) -> None:
    """cProfile the same number of raw and client calls: the client's top-10, and what it adds."""
    session = requests.Session()
    client = make_client(url)
    raw, cli = raw_call(session, url), client_call(client)
    calls = min(args.pairs, 5000)
    try:
        in_blocks([raw, cli], 200, args.max_seconds)
        profiles = []
        for call in (raw, cli):
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(calls):
                call()
            profiler.disable()
            profiles.append(profiler)
    finally:
        client.close()
        session.close()
    raw_stats, client_stats = (pstats.Stats(p, stream=io.StringIO()) for p in profiles)
    raw_table: dict[Any, Any] = raw_stats.stats  # type: ignore[attr-defined]
    client_table: dict[Any, Any] = client_stats.stats  # type: ignore[attr-defined]
    raw_n = sum(row[1] for row in raw_table.values()) / calls
    client_n = sum(row[1] for row in client_table.values()) / calls
    print()
    print(f"cProfile, {calls} calls each (times are inflated by the profiler; compare them with each other only)")
    print(f"  Python function calls per call: raw {raw_n:.0f}, client {client_n:.0f}")

    def name(key: tuple[str, int, str]) -> str:
        filename, line, function = key
        short = "/".join(filename.split("/")[-2:]) if "/" in filename else filename
        return f"{short}:{line}({function})"

    print("  Top 10 of client calls by own time (µs per call, calls per call):")
    top = sorted(client_table.items(), key=lambda item: item[1][2], reverse=True)[:10]
    for key, row in top:
        print(f"    {row[2] / calls * 1e6:8.1f} µs {row[1] / calls:6.1f}x  {name(key)}")
    print("  Top 10 by own time the client adds over raw (client minus raw; µs per call, extra calls per call):")
    rows = []
    for key in client_table.keys() | raw_table.keys():
        c_row = client_table.get(key, (0, 0, 0.0, 0.0))
        r_row = raw_table.get(key, (0, 0, 0.0, 0.0))
        rows.append((c_row[2] - r_row[2], c_row[1] - r_row[1], key))
    rows.sort(key=lambda row: row[0], reverse=True)
    for extra, count, key in rows[:10]:
        print(f"    {extra / calls * 1e6:+8.1f} µs {count / calls:+6.1f}x  {name(key)}")


def recording_cost(count: int) -> float:
    """µs of CPU per call to queue and record what a single-attempt call records (its attempt, its
    transport latency, its latency), ``count`` times: the work the metrics thread does off the path."""
    recorder = client_metrics.ClientMetrics("http://recording-cost.invalid/")
    all_metrics.flush()
    started = time.process_time()
    for _ in range(count):
        recorder.attempt("GET", 0)
        recorder.transport("GET", "ping", 200, 0.0006)
        recorder.call("GET", "ping", 200, circuit_breaker=False, attempt=0, elapsed=0.0006)
    all_metrics.flush()
    return (time.process_time() - started) / count * 1e6


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=15_000, help="measured rounds (default 15000)")
    parser.add_argument("--warmup", type=int, default=1_000, help="unmeasured rounds first (default 1000)")
    parser.add_argument("--server", choices=("process", "thread"), default="process", help="where the server runs")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=30.0,
        help="stop the main run after this long (default 30 s; the breakdown gets half)",
    )
    parser.add_argument("--body-size", type=int, default=None, help="the server answers this many bytes (default 2)")
    parser.add_argument("--post-size", type=int, default=0, help="POST a body of this many bytes instead of a GET")
    parser.add_argument("--breakdown", action="store_true", help="split the overhead by layer even if on target")
    parser.add_argument("--profile", action="store_true", help="print a cProfile top-10 of client calls")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.warmup < 0 or args.max_seconds <= 0:
        parser.error("--pairs must be >= 1, --warmup >= 0 and --max-seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(__doc__.split("\n\n", 1)[0])
    print(
        f"Python {platform.python_version()}, requests {requests.__version__}, {platform.machine()}, "
        f"server: {args.server} on 127.0.0.1"
    )
    print()
    if args.body_size is not None or args.post_size:
        asked = f"POST of {args.post_size} bytes (a POST is never hedged)" if args.post_size else "GET"
        print(f"response body: {args.body_size or 2} bytes; request: {asked}")
    with server_url(args.server, args.body_size) as url:
        ratio = run_main(args, url)
        if ratio > TARGET_P50_RATIO or args.breakdown:
            run_breakdown(args, url)
        if args.profile:
            run_profile(args, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

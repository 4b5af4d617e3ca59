"""The demo under load: a caller service under gunicorn calling a downstream with a heavy latency tail,
driven by separate processes, once with single attempts and once with hedging.

Two services of the demo on 127.0.0.1, each its own process tree:

* billing, the downstream: the demo's ``settings.demo_billing`` on its threaded server
  (``testproject.serve``, one process, so its ``/demo/stats`` counts every request it served); told by
  the query to answer ``--slow`` (5%) of its requests after ``--slow-delay`` (400 ms) and the rest at
  once;
* the caller: the demo's ``orders`` service (benchmarks/_load_settings.py) under gunicorn
  (``--workers`` processes, gthread with ``--threads`` threads each); its ``/demo/hop`` calls
  billing's ``/demo/hop`` through the client ``billing``, whose GET strategy is ``single`` for the
  first run and ``hedged`` (2 attempts, the second after the p95 of recent latencies) for the second:
  gunicorn is started afresh for each run with ``LOAD_STRATEGY`` set.

Each run: ``--warmup`` seconds of unmeasured load, then ``--seconds`` of measured load from
``--drivers`` driver processes (this script with ``--drive``) with ``--callers`` keep-alive callers
in all, each sending its next GET when the previous one has been answered (a closed loop: throughput
is what the system sustains), on a keep-alive connection renewed every ``--reconnect-every`` (100)
requests: gunicorn's workers race to accept connections, and with connections that live for the
whole run one worker often holds nearly all of them (the per-worker sockets show it; try
``--reconnect-every 0``), which makes runs incomparable. A call's latency is from sending the
request to reading the caller's whole answer; a call counts as failed when the caller answered other
than 200 or reported that billing did. "load" is the requests billing served during the measured
phase (and the hedges it led to) divided by the logical calls. For the caller's gunicorn workers,
threads, open sockets (``socket:`` entries of ``/proc/PID/fd``) and RSS are read at the start (after
the warm-up) and the end (after the measured load, once billing has had no request for a moment) of
each run.

    .venv/bin/python -m benchmarks.load [--seconds 12] [--warmup 2] [--callers 32] [--drivers 2]
        [--reconnect-every 100] [--workers 2] [--threads 16] [--slow 0.05] [--slow-delay 0.4]

Everything is bounded: each driver stops starting calls after its seconds; every server stops when
this script ends (its standard input closes) or after ``--max-seconds``; Ctrl-C stops them all.
"""

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks._stats import percentile

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("single", "hedged")
REQUEST_TIMEOUT_HEADER = "5"  # X-Request-Timeout the drivers send: the caller's deadline
SETTLE_QUIET = 0.3


# --- the driver (a separate process) -----------------------------------------------------------


def drive(url: str, callers: int, seconds: float, reconnect_every: int) -> dict[str, Any]:
    """``callers`` threads, each a keep-alive connection making GETs to ``url`` one after another
    until ``seconds`` have passed, opening a new connection after ``reconnect_every`` requests (0:
    never); returns the latencies and outcomes."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + ("?" + parts.query if parts.query else "")
    headers = {"X-Request-Timeout": REQUEST_TIMEOUT_HEADER, "Connection": "keep-alive"}
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    downstream_failures = 0
    errors = 0
    connections = 0
    end = time.monotonic() + seconds

    def caller() -> None:
        nonlocal downstream_failures, errors, connections
        conn: http.client.HTTPConnection | None = None
        served = 0
        try:
            while time.monotonic() < end:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=15)
                    with lock:
                        connections += 1
                outcome = _one_call(conn, target, headers)
                if outcome is None:
                    conn.close()
                    conn = None
                    with lock:
                        errors += 1
                    continue
                elapsed, response = outcome
                served += 1
                if response.will_close or (reconnect_every and served % reconnect_every == 0):
                    conn.close()
                    conn = None
                failed = response.status != 200 or _downstream_status(response.body) != 200
                with lock:
                    latencies.append(elapsed)
                    statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
                    downstream_failures += failed
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=caller, name=f"caller-{n}", daemon=True) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    with lock:
        return {
            "latencies": list(latencies),
            "statuses": dict(statuses),
            "failed": downstream_failures,
            "errors": errors,
            "connections": connections,
        }


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    will_close: bool


def _one_call(conn: http.client.HTTPConnection, target: str, headers: dict[str, str]) -> tuple[float, "Answer"] | None:
    """One GET on ``conn``: (seconds, the answer), or None when the connection failed."""
    started = time.perf_counter()
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return None
    return time.perf_counter() - started, Answer(response.status, body, response.will_close)


def _downstream_status(body: bytes) -> int | None:
    try:
        report = json.loads(body)
        return int(report["downstream"]["status"])
    except (ValueError, KeyError, TypeError):
        return None


# --- the services --------------------------------------------------------------------------------


class Stopped(Exception):
    """SIGTERM reached the benchmark."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 2.0) -> Any:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"{url} answered {response.status}")
        return json.loads(body)
    finally:
        conn.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 8.0) -> None:
    """SIGTERM the process (its session: gunicorn's workers too), then SIGKILL after ``timeout``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    if process.stdin:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # started with start_new_session: its group is its pid
        process.wait(5)


@contextlib.contextmanager
def started(command: list[str], environment: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.PIPE,  # the child stops when this closes
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only this script, which stops the children
        )
    try:
        yield process
    finally:
        stop_process(process)


def wait_until(ready: Any, process: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} while starting (see {log})")
        if time.monotonic() > until:
            raise RuntimeError(f"{what} did not answer in {timeout:.0f} s (see {log})")
        time.sleep(0.1)


# --- process figures -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcessFigures:
    pid: int
    threads: int
    sockets: int
    fds: int
    rss_kib: int


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def figures_of(pid: int) -> ProcessFigures | None:
    try:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        sockets = fds = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                fds += 1
                sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        return ProcessFigures(
            pid=pid,
            threads=int(status["Threads"]),
            sockets=sockets,
            fds=fds,
            rss_kib=int(status["VmRSS"].split()[0]),
        )
    except (OSError, KeyError, ValueError):
        return None


def workers_figures(arbiter: int) -> list[ProcessFigures]:
    return [f for pid in children_of(arbiter) if (f := figures_of(pid)) is not None]


# --- a run ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    strategy: str
    latencies: list[float]
    statuses: dict[str, int]
    failed: int
    errors: int
    driver_connections: int
    billing_requests: int
    wall: float
    start: list[ProcessFigures]
    end: list[ProcessFigures]

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def load(self) -> float:
        return self.billing_requests / self.calls if self.calls else float("nan")

    def pct(self, q: float) -> float:
        return percentile(sorted(self.latencies), q)


def run_drivers(url: str, callers: int, drivers: int, seconds: float, reconnect_every: int) -> dict[str, Any]:
    """``callers`` callers split over ``drivers`` processes of this script for ``seconds``; merged results."""
    shares = [callers // drivers + (n < callers % drivers) for n in range(drivers)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.load",
                "--drive",
                url,
                "--callers",
                str(share),
                "--seconds",
                str(seconds),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        for share in shares
        if share
    ]
    merged: dict[str, Any] = {"latencies": [], "statuses": {}, "failed": 0, "errors": 0, "connections": 0}
    try:
        for process in processes:
            out, _ = process.communicate(timeout=seconds + 45)
            if process.returncode != 0:
                raise RuntimeError(f"a driver exited with code {process.returncode}")
            part = json.loads(out)
            merged["latencies"] += part["latencies"]
            for status, count in part["statuses"].items():
                merged["statuses"][status] = merged["statuses"].get(status, 0) + count
            for key in ("failed", "errors", "connections"):
                merged[key] += part[key]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    return merged


def billing_count(billing_url: str) -> int:
    return int(get_json(billing_url + "demo/stats")["requests"])


def settle(billing_url: str, at_most: float = 3.0) -> int:
    """Wait until billing has read no new request for a moment (late hedges); its count then."""
    give_up = time.monotonic() + at_most
    seen = billing_count(billing_url)
    while time.monotonic() < give_up:
        time.sleep(SETTLE_QUIET)
        now = billing_count(billing_url)
        if now == seen:
            break
        seen = now
    return seen


def run(strategy: str, billing_url: str, environment: dict[str, str], args: argparse.Namespace) -> RunResult:
    port = free_port()
    caller_url = f"http://127.0.0.1:{port}/"
    log = args.log_dir / f"caller-{strategy}.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:benchmarks._load_gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(args.workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(args.threads),
        "--backlog",
        "512",
        "--keep-alive",
        "5",
        "testproject.wsgi:application",
    ]
    env = {**environment, "DJANGO_SETTINGS_MODULE": "benchmarks._load_settings", "LOAD_STRATEGY": strategy}
    with started(command, env, log) as gunicorn:
        wait_until(
            lambda: get_json(caller_url + "demo/stats") and len(children_of(gunicorn.pid)) >= args.workers,
            gunicorn,
            f"gunicorn ({strategy})",
            log,
        )
        query = urllib.parse.urlencode({"slow": args.slow, "slow_delay": args.slow_delay})
        target = f"{caller_url}demo/hop?{query}"
        if args.warmup > 0:
            run_drivers(target, args.callers, args.drivers, args.warmup, args.reconnect_every)
        before = settle(billing_url)
        start = workers_figures(gunicorn.pid)
        began = time.monotonic()
        measured = run_drivers(target, args.callers, args.drivers, args.seconds, args.reconnect_every)
        wall = time.monotonic() - began
        after = settle(billing_url)
        end = workers_figures(gunicorn.pid)
    return RunResult(
        strategy=strategy,
        latencies=measured["latencies"],
        statuses=measured["statuses"],
        failed=measured["failed"],
        errors=measured["errors"],
        driver_connections=measured["connections"],
        billing_requests=after - before,
        wall=wall,
        start=start,
        end=end,
    )


# --- the report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def totals(figures: Sequence[ProcessFigures]) -> tuple[int, int, float]:
    return (
        sum(f.threads for f in figures),
        sum(f.sockets for f in figures),
        sum(f.rss_kib for f in figures) / 1024,
    )


def report(results: Sequence[RunResult], args: argparse.Namespace) -> None:
    print()
    print(
        f"  {'run':<8}{'calls':>8}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>9}{'max ms':>9}"
        f"{'billing':>9}{'load':>7}{'failed':>8}{'errors':>7}"
    )
    for r in results:
        print(
            f"  {r.strategy:<8}{r.calls:>8}{r.calls / r.wall:>9.1f}{ms(r.pct(50))}{ms(r.pct(99))}{ms(r.pct(99.9))}"
            f"{ms(max(r.latencies, default=float('nan')))}{r.billing_requests:>9}{r.load:>7.3f}"
            f"{r.failed:>8}{r.errors:>7}"
        )
    print("  (billing = requests billing served in the measured phase; load = billing / calls; failed = caller")
    print("   answered other than 200 or reported that billing did; errors = connection errors at the drivers)")
    print()
    print("  caller's gunicorn workers, start -> end of the measured phase (per worker: threads/sockets/RSS MiB):")
    for r in results:
        t0, s0, m0 = totals(r.start)
        t1, s1, m1 = totals(r.end)
        print(
            f"  {r.strategy:<8} threads {t0} -> {t1}, sockets {s0} -> {s1}, RSS {m0:.1f} -> {m1:.1f} MiB "
            f"({len(r.start)} -> {len(r.end)} workers)"
        )
        ends = {f.pid: f for f in r.end}
        for f in r.start:
            e = ends.get(f.pid)
            after = f"{e.threads}/{e.sockets}/{e.rss_kib / 1024:.1f}" if e else "gone"
            print(f"           pid {f.pid}: {f.threads}/{f.sockets}/{f.rss_kib / 1024:.1f} -> {after}")
        other = {s: n for s, n in r.statuses.items() if s != "200"}
        if other:
            print(f"           non-200 answers from the caller: {other}")
    if len(results) == 2:
        single, hedged = results
        throughput = (hedged.calls / hedged.wall) / (single.calls / single.wall)
        print()
        print(
            f"  hedged / single: p99 {hedged.pct(99) / single.pct(99):.3f}x, p99.9 "
            f"{hedged.pct(99.9) / single.pct(99.9):.3f}x, throughput {throughput:.2f}x,"
            f" extra load from hedging {100 * (hedged.load - 1):+.1f}% (single: {100 * (single.load - 1):+.1f}%)"
        )


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0, help="measured load per run (default 12)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured load per run first (default 2)")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers in all (default 32)")
    parser.add_argument("--drivers", type=int, default=2, help="driver processes the callers are split over (2)")
    parser.add_argument(
        "--reconnect-every",
        type=int,
        default=100,
        help="a caller opens a new connection after this many requests (0: never; default 100)",
    )
    parser.add_argument("--workers", type=int, default=2, help="caller's gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=16, help="gthread threads per worker (default 16)")
    parser.add_argument("--slow", type=float, default=0.05, help="share of billing's slow requests (0.05)")
    parser.add_argument("--slow-delay", type=float, default=0.4, help="seconds a slow request takes (0.4)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="runs, in order (single,hedged)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="every server stops after this long")
    parser.add_argument("--log-dir", type=Path, default=None, help="servers' output (default: a temp dir)")
    parser.add_argument("--drive", metavar="URL", help=argparse.SUPPRESS)  # run as a driver process
    args = parser.parse_args(argv)
    args.strategies = [s for s in args.strategies.split(",") if s]
    if (
        not 0 < args.seconds <= 600
        or not 0 <= args.warmup <= 60
        or not 1 <= args.callers <= 512
        or not 1 <= args.drivers <= 16
        or not 0 <= args.reconnect_every <= 1_000_000
        or not 1 <= args.workers <= 16
        or not 1 <= args.threads <= 128
        or not 0 <= args.slow <= 1
        or not 0 <= args.slow_delay <= 5
        or not set(args.strategies) <= set(STRATEGIES)
        or not args.strategies
    ):
        parser.error("an option is out of range (see --help)")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.drive:
        json.dump(drive(args.drive, args.callers, args.seconds, args.reconnect_every), sys.stdout)
        return 0
    if args.log_dir is None:
        import tempfile

        args.log_dir = Path(tempfile.mkdtemp(prefix="load-"))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _terminate)
    print(__doc__.split("\n\n", 1)[0])
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; caller: gunicorn {args.workers} workers x "
        f"{args.threads} gthread threads; billing: {args.slow:.0%} of requests take {args.slow_delay * 1000:.0f} ms; "
        f"{args.callers} callers in {args.drivers} driver processes (new connection every {args.reconnect_every} "
        f"requests), {args.warmup:g} s warm-up + {args.seconds:g} s "
        f"per run; servers' logs in {args.log_dir}"
    )
    billing_port = free_port()
    environment = {
        **os.environ,
        "DEMO_BILLING_PORT": str(billing_port),
        "DEMO_DATABASE": ":memory:",
        "PYTHONUNBUFFERED": "1",
        "LOAD_MAX_SECONDS": str(args.max_seconds),
    }
    billing_url = f"http://127.0.0.1:{billing_port}/"
    billing_log = args.log_dir / "billing.log"
    results = []
    try:
        with started(
            [sys.executable, "-m", "testproject.serve", "--exit-with-parent"],
            {**environment, "DJANGO_SETTINGS_MODULE": "settings.demo_billing"},
            billing_log,
        ) as billing:
            wait_until(lambda: get_json(billing_url + "demo/stats"), billing, "billing", billing_log)
            for strategy in args.strategies:
                results.append(run(strategy, billing_url, environment, args))
                print(f"  {strategy}: {results[-1].calls} calls in {results[-1].wall:.1f} s", flush=True)
    except (KeyboardInterrupt, Stopped):
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

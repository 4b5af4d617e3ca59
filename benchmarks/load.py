"""The demo under load: a caller service under gunicorn calling a downstream with a heavy latency tail,
driven by separate processes, with single attempts and with hedging, interleaved.

Two services of the demo on 127.0.0.1, each its own process tree:

* billing, the downstream: the demo's billing (``benchmarks/_load_billing_settings.py``: with load
  shedding at a fixed limit of 32 requests at once) on its threaded server (``testproject.serve``,
  one process, so its ``/demo/stats`` and ``/metrics`` count every request it served); told by the
  query to answer ``--slow`` (5%) of its requests after ``--slow-delay`` (400 ms) and the rest at once;
* the caller: the demo's ``orders`` service (``benchmarks/_load_settings.py``) under gunicorn
  (``--workers`` processes, gthread with ``--threads`` threads each); its ``/demo/hop`` calls
  billing's ``/demo/hop`` through the client ``billing``, whose GET strategy is ``single`` or
  ``hedged`` (2 attempts, the second after the ``--hedge-percentile`` (p90) of recent latencies but
  not before ``--hedge-min-delay`` (50 ms), hedges at a lower priority, the default retry budget,
  no hedges while the learned delay is ``--saturation-ratio`` (2) times its lowest): gunicorn is
  started afresh for each run with ``LOAD_STRATEGY`` set and ``PROMETHEUS_MULTIPROC_DIR`` a new
  directory, so its ``/metrics`` counts the hedges, the hedges won and the budget's refusals of all
  its workers. The demo's orders sheds load; here it does not unless ``--caller-shedding`` (its
  own 503s are then counted under "caller shed"; docs/benchmarks.md has what it refused before
  the limit stopped judging the wait on billing as queueing, and after).

The load (``--rate``):

* ``auto`` (the default): first a calibration, ``--calibrate-seconds`` of closed-loop load on the
  caller with single attempts (every caller sends its next GET when the previous one is answered:
  what the machine sustains), then every run at ``--load-fraction`` (0.7) of that rate, or, with
  ``--target-cpu`` (0.7, the default; 0 for none), at the rate that short open-loop single runs
  (``--steer-runs``, at most 4, of 6 s) find keeps the whole machine that busy, but never above 0.8
  of the calibrated rate (a caller with few threads is bound by them long before the CPU); with
  ``--overload`` (the default), right after it a hedged run as long in a closed loop (its warm-up at
  the open-loop rate, so that the learned delay knows the unsaturated billing first): hedging at
  saturation, where the safety mechanisms have something to do;
* a number: that many calls a second in all;
* ``closed``: every run a closed loop of ``--callers`` callers (what the machine sustains).

An open-loop run schedules call ``k`` at a fixed time (the rate spread evenly over the ``--drivers``
driver processes) and measures its latency from that time, not from when a connection was free to
send it, so a stalled system cannot hide its queueing (no coordinated omission); "late" counts the
calls that started more than 10 ms after their time (all of a driver's ``--connections`` /
``--drivers`` connections were busy, or the driver was not scheduled on a busy machine). Connections are
keep-alive, renewed every ``--reconnect-every`` (100) requests: gunicorn's workers race to accept
connections, and with connections that live for the whole run one worker often holds nearly all of
them.

The runs: ``--pairs`` pairs in ABBA order (single, hedged, hedged, single, ...), then (``--anchor``,
the default when aio-request and tdigest import) one pair with an aiohttp caller using aio-request
(``benchmarks/_load_aio.py``, the same hop and settings) against the same billing at the same rate.
Each run: ``--warmup`` seconds of unmeasured load, then ``--seconds`` measured. Calls/s is the calls
answered OK within the measured window over its length; a call fails when the caller answered other
than 200 or reported that billing did. CPU is the machine's busy share over the window
(``/proc/stat``: everything on it, the drivers and other users included). load = requests billing
served in the window (and the hedges it led to) / calls. Hedges, hedges won and budget refusals are
the caller's ``aio_request_attempts_total{attempt="1"}``, ``aio_request_winning_attempt_total{attempt="1"}``
and ``aio_request_retry_budget_exhausted_total`` over the window; shed is billing's
``aio_request_server_shed_total`` by priority; "low" is how many of the run's requests billing
received (of the last 5,000 it keeps) came with ``X-Request-Priority: low``; the hedge delay is
what each worker's client had learned, asked every 0.5 s (``/load/hedge-delay``, benchmarks/_load_urls.py).
"Hedges in stalls" splits a hedged run's window into tenths of a second by when each call was due: a
tenth whose median call took over ``--hedge-min-delay`` is a stall, and the low-priority requests
billing received in stalls, a call due then, are set against those in the rest (from the first
request billing kept on): hedges that add load when every call is slow show there. Beside the
caller's threads, sockets and memory, the system share of its workers' CPU and their threads' context
switches a call (``/proc/PID/task/*/status``): a caller whose threads queue for the GIL or a lock
switches more a call. Billing's full garbage collections in each window (testproject/gc_pauses.py)
are counted with how many of the slowest 1% of calls were in flight during one: each stops every
request billing has, a hedge's too; ``--billing-gc frozen`` freezes its startup objects
(``testproject.serve --freeze-gc``) so they stop it far shorter. Each run's calls and billing's
arrivals are kept in the log directory (``calls-N-kind.json``, ``arrivals-N-kind.json``).

    .venv/bin/python -m benchmarks.load [--rate auto|closed|R] [--load-fraction 0.7] [--pairs 2]
        [--seconds 12] [--warmup 2] [--callers 32] [--connections 64] [--drivers 2] [--workers 2] [--threads 16]
        [--slow 0.05] [--slow-delay 0.4] [--hedge-percentile 0.9] [--hedge-min-delay 0.05]
        [--saturation-ratio 2] [--billing-gc as-is|frozen] [--no-anchor]

Everything is bounded: each driver stops starting calls after its seconds; every server stops when
this script ends (its standard input closes) or after ``--max-seconds``; Ctrl-C stops them all.
"""

import argparse
import contextlib
import dataclasses
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks._stats import percentile

ROOT = Path(__file__).resolve().parent.parent
PROJECT_KINDS = ("single", "hedged")
STEER_NUMBER = -2  # the first steering run's number; the next ones count down
ANCHOR_KINDS = ("aio-single", "aio-hedged")
REQUEST_TIMEOUT_HEADER = "5"  # X-Request-Timeout the drivers send: the caller's deadline
SETTLE_QUIET = 0.3
START_DELAY = 1.0  # seconds from launching the drivers to the common start of their load
LATE = 0.010  # an open-loop call that starts this much after its time waited for a connection
DELAY_SAMPLE_EVERY = 0.5
SHED = "aio_request_server_shed_total"


# --- the driver (a separate process) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    will_close: bool


class Driver:
    """``connections`` threads, each a keep-alive connection to ``url`` renewed every
    ``reconnect_every`` requests (0: never), from ``start_at`` (``time.monotonic()``, the same clock
    in every process of the machine) for ``seconds``.

    ``rate`` None: a closed loop, each thread sending its next GET when the previous one is answered;
    latency from sending to the whole answer. ``rate`` R (calls a second for this driver, ``offset``
    its first call's share of a gap): call ``k`` is due at ``start_at + (k + offset) / R`` and its
    latency is from then, however long it waited for a free connection.
    """

    def __init__(
        self, url: str, *, connections: int, seconds: float, reconnect_every: int, start_at: float, rate: float | None
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.target = parts.path + ("?" + parts.query if parts.query else "")
        self.headers = {"X-Request-Timeout": REQUEST_TIMEOUT_HEADER, "Connection": "keep-alive"}
        self.connections = connections
        self.reconnect_every = reconnect_every
        self.start_at = start_at
        self.end = start_at + seconds
        self.rate = rate
        self.offset = 0.0
        self.lock = threading.Lock()
        self.next_call = 0
        self.calls: list[tuple[float, float, int]] = []  # (latency, finished - start_at, ok)
        self.statuses: dict[str, int] = {}
        self.errors = 0
        self.opened = 0
        self.late = 0
        self.busy = 0  # late calls whose time came while every connection of the driver was busy

    def due(self) -> float | None:
        """The time the next call is due (open loop), or None when the run is over."""
        with self.lock:
            assert self.rate is not None
            due = self.start_at + (self.next_call + self.offset) / self.rate
            if due >= self.end:
                return None
            self.next_call += 1
            return due

    def caller(self) -> None:
        conn: http.client.HTTPConnection | None = None
        served = 0
        try:
            time.sleep(max(0.0, self.start_at - time.monotonic()))
            while True:
                if self.rate is None:
                    if time.monotonic() >= self.end:
                        return
                    due = None
                else:
                    due = self.due()
                    if due is None:
                        return
                    busy = time.monotonic() - due > LATE  # taken this late: no connection was free
                    time.sleep(max(0.0, due - time.monotonic()))
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
                    with self.lock:
                        self.opened += 1
                started = time.monotonic()
                answer = _one_call(conn, self.target, self.headers)
                finished = time.monotonic()
                if answer is None or answer.will_close:
                    conn.close()
                    conn = None
                if answer is None:
                    with self.lock:
                        self.errors += 1
                    continue
                served += 1
                if conn is not None and self.reconnect_every and served % self.reconnect_every == 0:
                    conn.close()
                    conn = None
                ok = answer.status == 200 and _downstream_status(answer.body) == 200
                with self.lock:
                    self.calls.append((finished - (due if due is not None else started), finished - self.start_at, ok))
                    self.statuses[str(answer.status)] = self.statuses.get(str(answer.status), 0) + 1
                    if due is not None and started - due > LATE:
                        self.late += 1
                        self.busy += busy
        finally:
            if conn is not None:
                conn.close()

    def run(self) -> dict[str, Any]:
        threads = [
            threading.Thread(target=self.caller, name=f"caller-{n}", daemon=True) for n in range(self.connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, self.end - time.monotonic()) + 30)
        with self.lock:
            return {
                "calls": list(self.calls),
                "statuses": dict(self.statuses),
                "errors": self.errors,
                "connections": self.opened,
                "late": self.late,
                "busy": self.busy,
            }


def _one_call(conn: http.client.HTTPConnection, target: str, headers: dict[str, str]) -> Answer | None:
    """One GET on ``conn``: the answer, or None when the connection failed."""
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return None
    return Answer(response.status, body, response.will_close)


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


def get_text(url: str, timeout: float = 5.0) -> str:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""), headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"{url} answered {response.status}")
        return body.decode()
    finally:
        conn.close()


def get_json(url: str, timeout: float = 5.0) -> Any:
    return json.loads(get_text(url, timeout))


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


# --- process, machine and service figures --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcessFigures:
    pid: int
    threads: int
    sockets: int
    fds: int
    rss_kib: int
    cpu_ticks: int  # user + system time so far, in clock ticks
    system_ticks: int = 0  # of it, system time (the kernel's, on the process's behalf)
    # Context switches of all its threads so far (voluntary and not): a thread that blocks on the GIL,
    # a lock or a socket switches out. Threads that ended meanwhile are not counted.
    switches: int = 0


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


def thread_switches(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far (``/proc/PID/task/*/status``)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split(":", 1)[1])
    return total


def figures_of(pid: int) -> ProcessFigures | None:
    try:
        user, system = (int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
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
            cpu_ticks=user + system,
            system_ticks=system,
            switches=thread_switches(pid),
        )
    except (OSError, KeyError, ValueError):
        return None


def workers_figures(arbiter: int) -> list[ProcessFigures]:
    return [f for pid in children_of(arbiter) if (f := figures_of(pid)) is not None]


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from the ``cpu`` line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def cpu_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else float("nan")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Metrics = list[tuple[str, dict[str, str], float]]


def read_metrics(url: str) -> Metrics | None:
    """The samples of a Prometheus text exposition at ``url``, or None when it cannot be read."""
    try:
        text = get_text(url)
    except (OSError, http.client.HTTPException):
        return None
    samples = []
    for line in text.splitlines():
        if line.startswith("#") or not (match := _SAMPLE.match(line)):
            continue
        with contextlib.suppress(ValueError):
            samples.append((match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])))
    return samples


def metric_sum(samples: Metrics | None, name: str, **labels: str) -> float | None:
    if samples is None:
        return None
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items()))


def metric_delta(before: Metrics | None, after: Metrics | None, name: str, **labels: str) -> int | None:
    first, last = metric_sum(before, name, **labels), metric_sum(after, name, **labels)
    return None if first is None or last is None else round(last - first)


class Observer:
    """Over a measured window: the machine's CPU share, and (``delay_url``) the hedge delay the caller's
    workers have learned, asked every ``DELAY_SAMPLE_EVERY`` seconds on a new connection each time
    (so both workers are asked)."""

    def __init__(self, start_at: float, seconds: float, delay_url: str | None) -> None:
        self.start_at, self.end = start_at, start_at + seconds
        self.delay_url = delay_url
        self.cpu = float("nan")
        self.load_average = float("nan")
        self.delays: list[tuple[int, float, bool]] = []  # (pid, ms, saturated)
        self.thread = threading.Thread(target=self._observe, daemon=True, name="observer")

    def __enter__(self) -> "Observer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(max(0.0, self.end - time.monotonic()) + 10)

    def _observe(self) -> None:
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        before = cpu_times()
        while (now := time.monotonic()) < self.end:
            if self.delay_url:
                with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                    d = get_json(self.delay_url, timeout=2.0)
                    if d.get("delay_ms") is not None:
                        self.delays.append((int(d["pid"]), float(d["delay_ms"]), bool(d["saturated"])))
            time.sleep(max(0.0, min(DELAY_SAMPLE_EVERY, self.end - time.monotonic())) if now < self.end else 0)
        self.cpu = cpu_share(before, cpu_times())
        with contextlib.suppress(OSError, ValueError):
            self.load_average = float(Path("/proc/loadavg").read_text().split()[0])


# --- a run ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    kind: str
    number: int  # position in the sequence (0: the calibration, -1: the overload run, -2 and below: steering)
    rate: float | None  # offered calls a second in all (None: closed loop)
    seconds: float
    calls: list[tuple[float, float, int]]  # (latency, finished after the start, ok)
    statuses: dict[str, int]
    errors: int
    late: int
    busy: int
    driver_connections: int
    billing_requests: int
    cpu: float
    load_average: float
    start: list[ProcessFigures]
    end: list[ProcessFigures]
    hedges: int | None = None
    hedges_won: int | None = None
    budget_refused: int | None = None
    caller_shed: dict[str, int | None] = dataclasses.field(default_factory=dict)
    billing_shed: dict[str, int | None] = dataclasses.field(default_factory=dict)
    low_arrivals: int | None = None
    kept_arrivals: int | None = None
    # Tenths of a second whose median call took over the hedge's least delay, and the low-priority
    # requests billing received a call in those tenths and in the others (hedges_in_stalls()).
    stalls: "Stalls | None" = None
    delays: list[tuple[int, float, bool]] = dataclasses.field(default_factory=list)
    billing_cpu_ticks: int | None = None
    # Billing's full garbage collections in the window: (seconds from its start, seconds they took).
    billing_gc: list[tuple[float, float]] | None = None

    @property
    def label(self) -> str:
        if self.number <= STEER_NUMBER:
            return f"steer {STEER_NUMBER - self.number + 1}"
        return {0: "calibration", -1: "overload"}.get(self.number, f"{self.number} {self.kind}")

    @property
    def latencies(self) -> list[float]:
        return sorted(latency for latency, _, _ in self.calls)

    @property
    def failed(self) -> int:
        return sum(not ok for _, _, ok in self.calls)

    @property
    def throughput(self) -> float:
        """Calls answered OK within the measured window, a second."""
        return sum(ok and finished <= self.seconds for _, finished, ok in self.calls) / self.seconds

    def shed(self, priority: str) -> int | None:
        """Billing's 503s for ``priority`` over the window, all reasons."""
        found = [n for key, n in self.billing_shed.items() if key.startswith(priority + "/")]
        return None if not found or None in found else sum(n for n in found if n is not None)

    @property
    def load(self) -> float:
        return self.billing_requests / len(self.calls) if self.calls else float("nan")

    def cpu_ms_per_call(self, figures: str) -> float:
        """CPU time the caller's workers (``"caller"``) or billing (``"billing"``) used a call, ms."""
        ticks = self.billing_cpu_ticks if figures == "billing" else self._caller_change("cpu_ticks")
        if ticks is None or not self.calls:
            return float("nan")
        return 1000 * ticks / os.sysconf("SC_CLK_TCK") / len(self.calls)

    def caller_split(self) -> tuple[float, float]:
        """The system share of the caller's workers' CPU over the window, and their context switches a call."""
        ticks, system, switches = (self._caller_change(name) for name in ("cpu_ticks", "system_ticks", "switches"))
        calls = len(self.calls)
        return (system / ticks if ticks else float("nan")), (switches / calls if calls else float("nan"))

    def _caller_change(self, figure: str) -> int:
        """How much ``figure`` of :class:`ProcessFigures` grew over the window, summed over the caller's
        workers that were there at its start and its end."""
        ends = {f.pid: f for f in self.end}
        return sum(getattr(ends[f.pid], figure) - getattr(f, figure) for f in self.start if f.pid in ends)

    def worst_half_second(self) -> float:
        """The highest median latency of the calls started in one half second of the window: stalls."""
        buckets: dict[int, list[float]] = {}
        for latency, finished, _ in self.calls:
            buckets.setdefault(int((finished - latency) * 2), []).append(latency)
        return max((statistics.median(v) for v in buckets.values()), default=float("nan"))

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)

    def slowest_during_gc(self, share: float = 0.01) -> tuple[int, int]:
        """Of the slowest ``share`` of the calls, how many were in flight while billing collected
        garbage (its full collections, :attr:`billing_gc`); and how many calls that share is."""
        slowest = sorted(self.calls, reverse=True)[: max(1, round(share * len(self.calls)))] if self.calls else []
        pauses = self.billing_gc or []
        during = sum(
            1
            for latency, finished, _ in slowest
            if any(at < finished and finished - latency < at + took for at, took in pauses)
        )
        return during, len(slowest)


def run_drivers(
    url: str, args: argparse.Namespace, seconds: float, rate: float | None, start_at: float
) -> dict[str, Any]:
    """``args.callers`` connections split over ``args.drivers`` processes of this script from ``start_at``
    for ``seconds``, in a closed loop (``rate`` None) or at ``rate`` calls a second in all; merged results."""
    total = args.callers if rate is None else args.connections
    shares = [total // args.drivers + (n < total % args.drivers) for n in range(args.drivers)]
    drivers = [share for share in shares if share]
    processes = []
    for n, share in enumerate(drivers):
        command = [sys.executable, "-m", "benchmarks.load", "--drive", url, "--callers", str(share)]
        command += ["--seconds", str(seconds), "--start-at", repr(start_at)]
        command += ["--reconnect-every", str(args.reconnect_every)]
        if rate is not None:  # driver n takes every len(drivers)-th call of the whole schedule
            command += ["--rate", repr(rate / len(drivers)), "--offset", repr(n / len(drivers))]
        processes.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True))
    merged: dict[str, Any] = {"calls": [], "statuses": {}, "errors": 0, "connections": 0, "late": 0, "busy": 0}
    try:
        for process in processes:
            out, _ = process.communicate(timeout=max(0.0, start_at - time.monotonic()) + seconds + 45)
            if process.returncode != 0:
                raise RuntimeError(f"a driver exited with code {process.returncode}")
            part = json.loads(out)
            merged["calls"] += part["calls"]
            for status, count in part["statuses"].items():
                merged["statuses"][status] = merged["statuses"].get(status, 0) + count
            for key in ("errors", "connections", "late", "busy"):
                merged[key] += part[key]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    return merged


def billing_stats(billing_url: str, tag: str) -> dict[str, Any]:
    """Billing's ``/demo/stats`` for run ``tag`` (its arrivals, its full garbage collections), or {}
    when it cannot be read."""
    try:
        stats = get_json(f"{billing_url}demo/stats?run={tag}", timeout=10)
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) else {}


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


def caller_command(kind: str, port: int, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "gunicorn", "-c", "python:benchmarks._load_gunicorn"]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(args.workers), "--backlog", "512", "--keep-alive", "5"]
    if kind in ANCHOR_KINDS:
        return [*command, "--worker-class", "aiohttp.GunicornWebWorker", "benchmarks._load_aio:make_app"]
    return [*command, "--worker-class", "gthread", "--threads", str(args.threads), "testproject.wsgi:application"]


def run(
    kind: str,
    number: int,
    *,
    rate: float | None,
    seconds: float,
    billing_url: str,
    billing_pid: int,
    environment: dict[str, str],
    args: argparse.Namespace,
    warmup_rate: float | str | None = "same",
) -> RunResult:
    """One run: a fresh caller of ``kind``, ``args.warmup`` seconds unmeasured (at ``warmup_rate``, by
    default ``rate``), ``seconds`` measured."""
    port = free_port()
    caller_url = f"http://127.0.0.1:{port}/"
    log = args.log_dir / f"caller-{number}-{kind}.log"
    strategy = kind.removeprefix("aio-")
    metrics_dir = Path(tempfile.mkdtemp(prefix="load-metrics-"))
    env = {
        **environment,
        "DJANGO_SETTINGS_MODULE": "benchmarks._load_settings",
        "LOAD_STRATEGY": strategy,
        "LOAD_BILLING_URL": billing_url + "demo/",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    project = kind in PROJECT_KINDS
    stats: dict[str, Any] = {}
    try:
        with started(caller_command(kind, port, args), env, log) as gunicorn:
            wait_until(
                lambda: get_json(caller_url + "demo/stats") and len(children_of(gunicorn.pid)) >= args.workers,
                gunicorn,
                f"the caller ({kind})",
                log,
            )
            query = {"slow": args.slow, "slow_delay": args.slow_delay}
            tag = f"run{number}-{os.getpid()}"
            if args.warmup > 0:
                warm = f"{caller_url}demo/hop?{urllib.parse.urlencode({**query, 'run': tag + '-warm'})}"
                warm_rate = rate if warmup_rate == "same" else warmup_rate
                assert not isinstance(warm_rate, str)
                run_drivers(warm, args, args.warmup, warm_rate, time.monotonic() + START_DELAY)
            target = f"{caller_url}demo/hop?{urllib.parse.urlencode({**query, 'run': tag})}"
            before = settle(billing_url)
            caller_before = read_metrics(caller_url + "metrics") if project else None
            billing_before = read_metrics(billing_url + "metrics")
            start = workers_figures(gunicorn.pid)
            billing_start = figures_of(billing_pid)
            start_at = time.monotonic() + START_DELAY
            wall_start = time.time() + START_DELAY
            delay_url = caller_url + "load/hedge-delay" if kind == "hedged" else None
            with Observer(start_at, seconds, delay_url) as observer:
                measured = run_drivers(target, args, seconds, rate, start_at)
            after = settle(billing_url)
            caller_after = read_metrics(caller_url + "metrics") if project else None
            billing_after = read_metrics(billing_url + "metrics")
            end = workers_figures(gunicorn.pid)
            billing_end = figures_of(billing_pid)
            stats = billing_stats(billing_url, tag)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    result = RunResult(
        kind=kind,
        number=number,
        rate=rate,
        seconds=seconds,
        calls=[(float(c[0]), float(c[1]), int(c[2])) for c in measured["calls"]],
        statuses=measured["statuses"],
        errors=measured["errors"],
        late=measured["late"],
        busy=measured["busy"],
        driver_connections=measured["connections"],
        billing_requests=after - before,
        cpu=observer.cpu,
        load_average=observer.load_average,
        start=start,
        end=end,
        delays=observer.delays,
    )
    if project:
        add_caller_metrics(result, caller_before, caller_after)
    add_billing_figures(
        result,
        before=billing_before,
        after=billing_after,
        start=billing_start,
        end=billing_end,
        stats=stats,
        wall_start=wall_start,
    )
    arrivals = stats.get("arrivals")
    if arrivals:
        result.stalls = hedges_in_stalls(result.calls, arrivals, wall_start, args.hedge_min_delay)
    (args.log_dir / f"calls-{number}-{kind}.json").write_text(json.dumps(result.calls))
    # Billing's arrivals (wall-clock times) beside the window's start on the same clock, for lining
    # them up with the calls (a call's start is its time from the window's start).
    arrivals_file = args.log_dir / f"arrivals-{number}-{kind}.json"
    arrivals_file.write_text(json.dumps({"start": wall_start, "arrivals": arrivals}))
    return result


def add_caller_metrics(result: RunResult, before: Metrics | None, after: Metrics | None) -> None:
    result.hedges = metric_delta(before, after, "aio_request_attempts_total", attempt="1")
    result.hedges_won = metric_delta(before, after, "aio_request_winning_attempt_total", attempt="1")
    result.budget_refused = metric_delta(before, after, "aio_request_retry_budget_exhausted_total")
    result.caller_shed = {
        reason: metric_delta(before, after, SHED, reason=reason) for reason in ("capacity", "queue_timeout", "deadline")
    }


@dataclasses.dataclass(frozen=True)
class Stalls:
    tenths: int  # tenths of a second (of the calls' scheduled times) whose median call took over the threshold
    low_a_call_in_stalls: float  # low-priority requests billing received in those tenths, per call due in them
    low_a_call_elsewhere: float  # the same in the other tenths


def hedges_in_stalls(
    calls: Sequence[tuple[float, float, int]], arrivals: Sequence[dict[str, Any]], start: float, threshold: float
) -> Stalls | None:
    """How many hedges went in the stalls of a run, against the rest of it: were they held back when
    every call was slow (docs/usage.md, the stragglers rule), or did they add to the load then?

    ``calls`` are (latency, finished, ok), times from the window's start; ``arrivals`` billing's
    (``at`` on the wall clock, ``priority``), ``start`` the window's start on that clock. Only the
    tenths from the first arrival billing kept on (it keeps its last 5,000) count; None if none does."""
    by_tenth: dict[int, list[float]] = {}
    for latency, finished, _ in calls:
        by_tenth.setdefault(int((finished - latency) * 10), []).append(latency)
    low: dict[int, int] = {}
    for arrival in arrivals:
        tenth = int((arrival["at"] - start) * 10)
        low[tenth] = low.get(tenth, 0) + (arrival.get("priority") == "low")
    if not low:
        return None
    first = min(low)
    stalled = [0, 0, 0]  # tenths, calls, low arrivals
    other = [0, 0]
    for tenth, latencies in by_tenth.items():
        if tenth < first:
            continue
        if statistics.median(latencies) > threshold:
            stalled[0] += 1
            stalled[1] += len(latencies)
            stalled[2] += low.get(tenth, 0)
        else:
            other[0] += len(latencies)
            other[1] += low.get(tenth, 0)
    return Stalls(
        tenths=stalled[0],
        low_a_call_in_stalls=stalled[2] / stalled[1] if stalled[1] else 0.0,
        low_a_call_elsewhere=other[1] / other[0] if other[0] else 0.0,
    )


def add_billing_figures(
    result: RunResult,
    *,
    before: Metrics | None,
    after: Metrics | None,
    start: ProcessFigures | None,
    end: ProcessFigures | None,
    stats: dict[str, Any],
    wall_start: float,
) -> None:
    """The run's figures from billing: its shed requests (``before``/``after``: its metrics), its CPU
    (``start``/``end``), and from its ``/demo/stats`` (``stats``, empty if unread) the arrivals it kept
    and its full garbage collections in the window, which started at ``wall_start`` (``time.time()``)."""
    arrivals = stats.get("arrivals")
    if stats.get("gc_pauses") is not None:
        # On the window's clock: seconds from its start, as the calls' times are.
        result.billing_gc = [
            (at - wall_start, took) for at, took in stats["gc_pauses"] if 0 <= at - wall_start <= result.seconds
        ]
    result.billing_shed = {
        f"{p}/{reason}": metric_delta(before, after, SHED, priority=p, reason=reason)
        for p in ("high", "normal", "low")
        for reason in ("capacity", "queue_timeout", "deadline")
    }
    if start and end:
        result.billing_cpu_ticks = end.cpu_ticks - start.cpu_ticks
    if arrivals is not None:
        result.low_arrivals = sum(a.get("priority") == "low" for a in arrivals)
        result.kept_arrivals = len(arrivals)


# --- the report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def totals(figures: Sequence[ProcessFigures]) -> tuple[int, int, float]:
    return (
        sum(f.threads for f in figures),
        sum(f.sockets for f in figures),
        sum(f.rss_kib for f in figures) / 1024,
    )


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


def caller_shed_text(r: RunResult) -> str:
    if not r.caller_shed:
        return "-"
    return "/".join(count(r.caller_shed[reason]) for reason in ("capacity", "queue_timeout", "deadline"))


def delays_text(r: RunResult) -> str:
    if not r.delays:
        return "-"
    values = sorted(ms for _, ms, _ in r.delays)
    saturated = sum(s for _, _, s in r.delays)
    return (
        f"{values[0]:.0f}/{statistics.median(values):.0f}/{values[-1]:.0f} ms, "
        f"saturated {saturated}/{len(values)}, {len({pid for pid, _, _ in r.delays})} workers"
    )


def pairs_of(results: Sequence[RunResult], kinds: tuple[str, str]) -> list[tuple[RunResult, RunResult]]:
    """The (single, hedged) pairs of consecutive runs of ``kinds``, in blocks of two (ABBA: 1-2, 3-4...)."""
    runs = [r for r in results if r.kind in kinds and r.number > 0]
    pairs = []
    for first, second in zip(runs[::2], runs[1::2], strict=False):
        single, hedged = (first, second) if first.kind == kinds[0] else (second, first)
        if single.kind == kinds[0] and hedged.kind == kinds[1]:
            pairs.append((single, hedged))
    return pairs


def report(results: Sequence[RunResult], args: argparse.Namespace) -> None:
    print()
    print(
        f"  {'run':<14}{'rate/s':>8}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>9}{'max ms':>9}{'stall':>8}"
        f"{'CPU %':>7}{'caller':>7}{'billing':>8}{'load1':>6}{'calls':>7}{'failed':>7}{'errors':>7}{'late':>11}"
    )
    for r in results:
        rate = "closed" if r.rate is None else f"{r.rate:.1f}"
        print(
            f"  {r.label:<14}{rate:>8}{r.throughput:>9.1f}{ms(r.pct(50))}{ms(r.pct(99))}{ms(r.pct(99.9))}"
            f"{ms(r.latencies[-1] if r.calls else float('nan'))}{r.worst_half_second() * 1000:>8.1f}{100 * r.cpu:>7.1f}"
            f"{r.cpu_ms_per_call('caller'):>7.2f}{r.cpu_ms_per_call('billing'):>8.2f}{r.load_average:>6.2f}"
            f"{len(r.calls):>7}{r.failed:>7}{r.errors:>7}{f'{r.late} ({r.busy})':>11}"
        )
    print("  (calls/s = calls answered OK within the measured window / its seconds; open loop: latency from each")
    print("   call's scheduled time; stall = the highest median latency of the calls started in one half")
    print("   second; CPU = the whole machine's busy share over the window, everything on it")
    print("   included; caller, billing = CPU ms a call in the caller's workers and in billing (/proc/PID/stat);")
    print("   load1 = the machine's load average at the end; failed = the caller answered other than 200 or")
    print("   reported that billing did; errors = connection errors; late = calls started > 10 ms after their")
    print("   time (in brackets: those whose time came while all the driver's connections were busy)")
    print()
    print("  what keeps hedging safe, over each measured window:")
    print(
        f"  {'run':<14}{'billing':>8}{'load':>7}{'hedges':>7}{'won':>6}{'refused':>8}{'low/kept':>12}"
        f"{'shed h/n/l':>12}{'caller shed':>12}  learned hedge delay min/median/max"
    )
    for r in results:
        shed = "/".join(count(r.shed(p)) for p in ("high", "normal", "low"))
        low = f"{count(r.low_arrivals)}/{count(r.kept_arrivals)}"
        print(
            f"  {r.label:<14}{r.billing_requests:>8}{r.load:>7.3f}{count(r.hedges):>7}{count(r.hedges_won):>6}"
            f"{count(r.budget_refused):>8}{low:>12}{shed:>12}{caller_shed_text(r):>12}  {delays_text(r)}"
        )
    print("  (billing = requests billing served; load = billing / calls; hedges, won = the caller's second")
    print("   attempts sent and answers they gave; refused = hedges the retry budget refused; low/kept = the run's")
    print("   requests billing received with X-Request-Priority: low / of those it kept (its last 5,000); shed =")
    print("   billing's 503s by priority; caller shed = the caller's own 503s (--caller-shedding) by reason,")
    print("   capacity/queue_timeout/deadline; learned hedge delay = asked of the caller's workers every 0.5 s,")
    print("   saturated = samples where SATURATION_RATIO held hedges back; -: not measured for this caller)")
    for r in results:
        if reasons := {key: n for key, n in r.billing_shed.items() if n}:
            print(f"  {r.label}: billing shed (priority/reason) {reasons}")
    stalls = [r for r in results if r.kind == "hedged" and r.stalls is not None]  # aio-request sends no priority
    if stalls:
        print("  hedges in stalls (tenths of a second whose median call took over the hedge's least delay),")
        print("  as low-priority requests billing received a call due then, against the rest of the run:")
        for r in stalls:
            assert r.stalls is not None
            t = r.stalls
            print(
                f"  {r.label:<14} {t.tenths} tenths stalled: {t.low_a_call_in_stalls:.3f} a call in them,"
                f" {t.low_a_call_elsewhere:.3f} elsewhere"
            )
    print()
    print(
        "  caller's workers, start -> end of the measured window (threads, sockets, RSS MiB, summed; the"
        " system share of their CPU and their threads' context switches, over the window):"
    )
    for r in results:
        t0, s0, m0 = totals(r.start)
        t1, s1, m1 = totals(r.end)
        other = {s: n for s, n in r.statuses.items() if s != "200"}
        system, switches = r.caller_split()
        print(
            f"  {r.label:<14} threads {t0} -> {t1}, sockets {s0} -> {s1}, RSS {m0:.1f} -> {m1:.1f} MiB "
            f"({len(r.start)} -> {len(r.end)} workers); CPU {100 * system:.0f}% system, {switches:.1f} context"
            f" switches a call{f'; non-200 answers {other}' if other else ''}"
        )
    report_billing_gc(results, args)
    report_overload(results)
    report_pairs(results)


def report_billing_gc(results: Sequence[RunResult], args: argparse.Namespace) -> None:
    measured = [r for r in results if r.billing_gc is not None]
    if not measured:
        return
    print()
    print(
        f"  billing's full garbage collections over each measured window (GC {args.billing_gc}; each stops every"
        " request billing has in flight, a hedge's too):"
    )
    for r in measured:
        assert r.billing_gc is not None
        took = [seconds for _, seconds in r.billing_gc]
        during, slowest = r.slowest_during_gc()
        print(
            f"  {r.label:<14} {len(took)}, longest {max(took, default=0) * 1000:.1f} ms, {sum(took) * 1000:.1f} ms in"
            f" all; of the slowest 1% of calls ({slowest}), {during} were in flight during one"
        )


def report_overload(results: Sequence[RunResult]) -> None:
    runs = {r.number: r for r in results}
    single, hedged = runs.get(0), runs.get(-1)
    if single is None or hedged is None:
        return
    print()
    print(
        f"  at saturation (closed loop; the calibration and the overload run, one each, not interleaved): "
        f"hedged / single p99 "
        f"{hedged.pct(99) / single.pct(99):.3f}x, throughput {hedged.throughput / single.throughput:.3f}x, "
        f"extra load {100 * (hedged.load - 1):+.1f}%, hedges {count(hedged.hedges)} for {len(hedged.calls)} calls"
    )


def report_pairs(results: Sequence[RunResult]) -> None:
    pairs = pairs_of(results, PROJECT_KINDS)
    if pairs:
        print()
        print("  hedged / single, per pair of adjacent runs:")
        for single, hedged in pairs:
            print(
                f"  runs {single.number} and {hedged.number}: p99 {hedged.pct(99) / single.pct(99):.3f}x, p99.9 "
                f"{hedged.pct(99.9) / single.pct(99.9):.3f}x, p50 {hedged.pct(50) / single.pct(50):.3f}x, throughput "
                f"{hedged.throughput / single.throughput:.3f}x, CPU {100 * single.cpu:.0f}% -> "
                f"{100 * hedged.cpu:.0f}%, extra load {100 * (hedged.load - 1):+.1f}%"
            )
        worst_p99 = max(pairs, key=lambda p: p[1].pct(99) / p[0].pct(99))
        worst_tp = min(pairs, key=lambda p: p[1].throughput / p[0].throughput)
        p99_ratio = worst_p99[1].pct(99) / worst_p99[0].pct(99)
        tp_ratio = worst_tp[1].throughput / worst_tp[0].throughput
        cpus = [100 * s.cpu for s, _ in pairs]
        print(
            f"  worst pair: p99 {p99_ratio:.3f}x (runs {worst_p99[0].number} and {worst_p99[1].number}), throughput "
            f"{tp_ratio:.3f}x (runs {worst_tp[0].number} and {worst_tp[1].number})"
        )
        met = {True: "MET", False: "MISSED"}
        print(f"  goal p99 <= 0.30x in every pair: {met[p99_ratio <= 0.30]} (worst {p99_ratio:.3f}x)")
        print(f"  goal throughput >= 0.97x in every pair: {met[tp_ratio >= 0.97]} (worst {tp_ratio:.3f}x)")
        print(f"  machine CPU during the single runs: {min(cpus):.0f}-{max(cpus):.0f}% (goal: about 70%)")
    anchor = pairs_of(results, ANCHOR_KINDS)
    if anchor:
        print()
        print("  anchor, aio-request (aiohttp) against the same billing at the same rate:")
        hedged_p99 = [h.pct(99) for _, h in pairs]
        for single, hedged in anchor:
            line = (
                f"  runs {single.number} and {hedged.number}: aio-request hedged / single p99 "
                f"{hedged.pct(99) / single.pct(99):.3f}x, throughput {hedged.throughput / single.throughput:.3f}x, "
                f"extra load {100 * (hedged.load - 1):+.1f}%"
            )
            if hedged_p99:
                line += "; this project's hedged p99 (median of its runs) / aio-request's: "
                line += f"{statistics.median(hedged_p99) / hedged.pct(99):.3f}x"
            print(line)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="auto", help="auto, closed, or calls a second in all (default auto)")
    parser.add_argument(
        "--load-fraction", type=float, default=0.7, help="--rate auto: share of the calibrated rate (0.7)"
    )
    parser.add_argument("--calibrate-seconds", type=float, default=6.0, help="--rate auto: closed-loop seconds (6)")
    parser.add_argument(
        "--target-cpu",
        type=float,
        default=0.7,
        help="--rate auto: steer the rate until a single run keeps the machine this busy (0.7; 0: no steering)",
    )
    parser.add_argument(
        "--steer-runs", type=int, default=4, help="--target-cpu: short single runs to steer with, at most (4)"
    )
    parser.add_argument(
        "--overload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--rate auto: after the calibration, a closed-loop hedged run as long (default: on)",
    )
    parser.add_argument("--pairs", type=int, default=2, help="pairs of single and hedged runs, ABBA order (2)")
    parser.add_argument(
        "--anchor",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a pair of aio-request runs (default: when aio-request and tdigest import)",
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="measured load per run (default 12)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured load per run first (default 2)")
    parser.add_argument("--callers", type=int, default=32, help="closed loop: callers in all (32)")
    parser.add_argument("--connections", type=int, default=64, help="open loop: connections in all at most (64)")
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
    parser.add_argument("--hedge-percentile", type=float, default=0.9, help="hedge after this percentile (0.9)")
    parser.add_argument(
        "--hedge-min-delay", type=float, default=0.05, help="hedged: MIN_DELAY_SECONDS, the least delay (0.05)"
    )
    parser.add_argument(
        "--saturation-ratio", type=float, default=2.0, help="hedged client's SATURATION_RATIO (0: off; default 2)"
    )
    parser.add_argument(
        "--stragglers-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hedged client's STRAGGLERS_ONLY: hedge only calls younger calls passed (default: on)",
    )
    parser.add_argument(
        "--caller-shedding",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the caller sheds load as the demo's orders does (default: off)",
    )
    parser.add_argument("--billing-concurrency", type=int, default=32, help="billing's shedding limit (32)")
    parser.add_argument(
        "--billing-gc",
        choices=("as-is", "frozen"),
        default="as-is",
        help="billing's garbage collector as Python sets it (as-is, the default), or its startup objects"
        " frozen (gc.freeze(), testproject/serve.py --freeze-gc), so that its full collections stop it far shorter",
    )
    parser.add_argument("--max-seconds", type=float, default=600.0, help="every server stops after this long")
    parser.add_argument("--log-dir", type=Path, default=None, help="servers' output (default: a temp dir)")
    parser.add_argument("--drive", metavar="URL", help=argparse.SUPPRESS)  # run as a driver process
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive and args.rate == "auto":
        args.rate = "closed"  # a driver is told its rate, or runs a closed loop
    try:
        args.rate = None if args.rate == "closed" else args.rate if args.rate == "auto" else float(args.rate)
    except ValueError:
        parser.error("--rate is auto, closed or a number")
    if (
        not 0 < args.seconds <= 600
        or not 0 <= args.warmup <= 60
        or not 0 < args.calibrate_seconds <= 60
        or not 0 < args.load_fraction <= 1.5
        or not 0 <= args.target_cpu < 1
        or not 1 <= args.steer_runs <= 10
        or not 1 <= args.pairs <= 20
        or (isinstance(args.rate, float) and not 0 < args.rate <= 100_000)
        or not 1 <= args.callers <= 512
        or not 1 <= args.connections <= 1024
        or not 1 <= args.drivers <= 16
        or not 0 <= args.reconnect_every <= 1_000_000
        or not 1 <= args.workers <= 16
        or not 1 <= args.threads <= 128
        or not 0 <= args.slow <= 1
        or not 0 <= args.slow_delay <= 5
        or not 0 < args.hedge_percentile < 1
        or not 0 <= args.hedge_min_delay <= 5
        or not (args.saturation_ratio == 0 or args.saturation_ratio > 1)
        or not 1 <= args.billing_concurrency <= 10_000
        or not 0 < args.max_seconds <= 86_400
    ):
        parser.error("an option is out of range (see --help)")
    return args


STEER_TOLERANCE = 0.03  # a steering run this close to --target-cpu ends the steering
# The steering never goes above this share of the calibrated (closed-loop) rate. A caller with few
# threads is bound by them, not by the CPU: with 1 worker of 4 threads (168 calls/s at 20% CPU) the
# rate steered to 70% CPU was 595 calls/s, 3.5 times what it could serve, and the single runs
# queued for 30 s.
STEER_CEILING = 0.8
# A steering run at least this busy saturated the machine: it says the rate was too high, not how much.
STEER_SATURATED = 0.9
STEER_SECONDS = 6.0  # shorter runs, just after gunicorn started, measured the CPU of a rate less steadily


def steer(
    rate: float,
    *,
    ceiling: float = math.inf,
    billing_url: str,
    billing_pid: int,
    environment: dict[str, str],
    args: argparse.Namespace,
    results: list["RunResult"],
) -> float:
    """The open-loop rate at which single attempts keep the machine ``args.target_cpu`` busy.

    The closed-loop calibration meets this machine's capacity at one moment, and the capacity of
    these VMs moves by a third from one minute to the next: 0.7 of it gave single runs at 61% to
    84% CPU. Short open-loop single runs correct the rate in proportion (CPU grows about linearly
    with the rate below saturation), each change at most by half, until one lands within 3 points
    or ``args.steer_runs`` have run. Each correction goes by the median of what every run so far
    measured (calls a second per point of CPU, runs below :data:`STEER_SATURATED`), not by the last
    run alone: corrected by the last, a run at a quiet moment (454 calls/s at 59% CPU, after 411 at
    63% and 474 at 81%) sent the pairs to 545 calls/s, which kept the machine 71-91% busy. It only
    narrows the spread: on one VM the same rate measured 58% and 72% a minute apart. Never above
    ``ceiling`` (:data:`STEER_CEILING` of the calibrated rate): past it the caller's threads, not
    the CPU, are full.
    """
    per_cpu: list[float] = []  # each run's rate / its CPU share
    for step in range(args.steer_runs):
        probe = run(
            "single",
            STEER_NUMBER - step,
            rate=rate,
            seconds=STEER_SECONDS,
            billing_url=billing_url,
            billing_pid=billing_pid,
            environment=environment,
            args=args,
        )
        results.append(probe)
        close = abs(probe.cpu - args.target_cpu) <= STEER_TOLERANCE
        capped = False
        if probe.cpu < STEER_SATURATED:
            per_cpu.append(rate / max(probe.cpu, 0.01))
        if not close:
            # A saturated run (its CPU share is all there was, not what the rate needed) tells only
            # that the rate was too high: cut by half, or to what the unsaturated runs measured.
            by_runs = args.target_cpu * statistics.median(per_cpu) if per_cpu else 0.0
            wanted = rate * min(1.5, max(0.5, by_runs / rate))
            capped = wanted > ceiling
            if capped and rate >= ceiling:
                print(f"  {probe.label}: {probe.throughput:.1f} calls/s at {100 * probe.cpu:.0f}% CPU", flush=True)
                break  # already at the ceiling: no faster run to try
            rate = min(wanted, ceiling)
        print(
            f"  {probe.label}: {probe.throughput:.1f} calls/s at {100 * probe.cpu:.0f}% CPU"
            + ("" if close else f"; next at {rate:.1f} calls/s")
            + (f" ({STEER_CEILING:g} of the calibrated rate: the caller's threads are the bound)" if capped else ""),
            flush=True,
        )
        if close:
            break
    print(f"  runs at {rate:.1f} calls/s", flush=True)
    return rate


def anchor_missing() -> str | None:
    """Why the aio-request anchor cannot run here, or None."""
    try:
        import aio_request  # noqa: F401
        import aiohttp.worker  # noqa: F401
        import tdigest  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError as error:
        return f"{error.name} does not import (aio-request's percentile delays need tdigest: pip install tdigest)"
    return None


def sequence(args: argparse.Namespace) -> list[str]:
    """The runs in order: single and hedged in ABBA order, then the anchor's pair."""
    kinds: list[str] = []
    for n in range(args.pairs):
        kinds += PROJECT_KINDS if n % 2 == 0 else PROJECT_KINDS[::-1]
    return kinds + (list(ANCHOR_KINDS) if args.anchor else [])


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.drive:
        driver = Driver(
            args.drive,
            connections=args.callers,
            seconds=args.seconds,
            reconnect_every=args.reconnect_every,
            start_at=args.start_at,
            rate=args.rate,
        )
        driver.offset = args.offset
        json.dump(driver.run(), sys.stdout)
        return 0
    if args.log_dir is None:
        args.log_dir = Path(tempfile.mkdtemp(prefix="load-"))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    missing = anchor_missing()
    if args.anchor is None:
        args.anchor = missing is None
    elif args.anchor and missing:
        print(f"no anchor: {missing}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _terminate)
    print(__doc__.split("\n\n", 1)[0])
    if args.rate == "auto":
        load = f"open loop at {args.load_fraction:g} of the calibrated rate"
    else:
        load = "closed loop" if args.rate is None else f"open loop at {args.rate:g} calls/s"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {Path('/proc/loadavg').read_text().split()[0]}; caller: gunicorn "
        f"{args.workers} workers x {args.threads} gthread threads; billing: {args.slow:.0%} of requests take "
        f"{args.slow_delay * 1000:.0f} ms, shedding at {args.billing_concurrency} at once, GC {args.billing_gc}; "
        f"{load}; {args.callers} "
        f"callers (closed loop) or up to {args.connections} connections (open loop) in {args.drivers} driver "
        f"processes (new every {args.reconnect_every} requests); hedged: p"
        f"{args.hedge_percentile * 100:g} (at least {args.hedge_min_delay * 1000:g} ms), "
        f"SATURATION_RATIO {args.saturation_ratio:g}, STRAGGLERS_ONLY {args.stragglers_only}, HEDGE_PRIORITY lower; "
        f"{args.pairs} pairs, {args.warmup:g} s warm-up + {args.seconds:g} s a run; servers' logs in {args.log_dir}"
    )
    if not args.anchor:
        print(f"no aio-request anchor: {missing or '--no-anchor'}")
    billing_port = free_port()
    environment = {
        **os.environ,
        "DEMO_BILLING_PORT": str(billing_port),
        "DEMO_DATABASE": ":memory:",
        "PYTHONUNBUFFERED": "1",
        "LOAD_MAX_SECONDS": str(args.max_seconds),
        "LOAD_HEDGE_PERCENTILE": repr(args.hedge_percentile),
        "LOAD_SATURATION_RATIO": repr(args.saturation_ratio),
        "LOAD_HEDGE_MIN_DELAY": repr(args.hedge_min_delay),
        "LOAD_STRAGGLERS_ONLY": "1" if args.stragglers_only else "0",
        "LOAD_BILLING_CONCURRENCY": str(args.billing_concurrency),
        "LOAD_CALLER_SHEDDING": "1" if args.caller_shedding else "0",
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # billing exports its own metrics, alone
    billing_url = f"http://127.0.0.1:{billing_port}/"
    billing_log = args.log_dir / "billing.log"
    results: list[RunResult] = []
    try:
        with started(
            [sys.executable, "-m", "testproject.serve", "--exit-with-parent"]
            + (["--freeze-gc"] if args.billing_gc == "frozen" else []),
            {**environment, "DJANGO_SETTINGS_MODULE": "benchmarks._load_billing_settings"},
            billing_log,
        ) as billing:
            wait_until(lambda: get_json(billing_url + "demo/stats"), billing, "billing", billing_log)
            rate = args.rate
            if rate == "auto":
                calibration = run(
                    "single",
                    0,
                    rate=None,
                    seconds=args.calibrate_seconds,
                    billing_url=billing_url,
                    billing_pid=billing.pid,
                    environment=environment,
                    args=args,
                )
                results.append(calibration)
                rate = args.load_fraction * calibration.throughput
                print(
                    f"  calibration (single attempts, closed loop): {calibration.throughput:.1f} calls/s at "
                    f"{100 * calibration.cpu:.0f}% CPU; {'first try' if args.target_cpu else 'runs'} at "
                    f"{rate:.1f} calls/s",
                    flush=True,
                )
                if args.target_cpu:
                    rate = steer(
                        rate,
                        ceiling=STEER_CEILING * calibration.throughput,
                        billing_url=billing_url,
                        billing_pid=billing.pid,
                        environment=environment,
                        args=args,
                        results=results,
                    )
                if args.overload:
                    overload = run(
                        "hedged",
                        -1,
                        rate=None,
                        seconds=args.calibrate_seconds,
                        billing_url=billing_url,
                        billing_pid=billing.pid,
                        environment=environment,
                        args=args,
                        warmup_rate=rate,  # the delay learns its baseline below saturation first
                    )
                    results.append(overload)
                    print(
                        f"  overload (hedged, closed loop): {overload.throughput:.1f} calls/s at "
                        f"{100 * overload.cpu:.0f}% CPU",
                        flush=True,
                    )
            for number, kind in enumerate(sequence(args), start=1):
                results.append(
                    run(
                        kind,
                        number,
                        rate=rate,
                        seconds=args.seconds,
                        billing_url=billing_url,
                        billing_pid=billing.pid,
                        environment=environment,
                        args=args,
                    )
                )
                r = results[-1]
                print(
                    f"  {r.label}: {len(r.calls)} calls, p99 {r.pct(99) * 1000:.1f} ms, CPU {100 * r.cpu:.0f}%",
                    flush=True,
                )
    except (KeyboardInterrupt, Stopped):
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

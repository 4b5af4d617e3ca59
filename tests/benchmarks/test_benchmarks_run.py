"""The benchmark scripts run as `make bench` runs them, on tiny sizes: they must keep working (their
figures are not checked here: speed lives in the scripts, on a quiet machine)."""

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*arguments: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("options", [(), ("--post-size", "100"), ("--body-size", "5000")])
def test_overhead_runs_and_prints_its_ratios(options: tuple[str, ...]) -> None:
    out = _run("benchmarks.overhead", "--pairs", "60", "--warmup", "10", *options)
    assert "anchor: raw requests.Session." in out
    assert "target: client p50 at most 0.60x raw ->" in out
    # judged both ways: each variant right after itself, and each right after the other (its docstring says why)
    assert "each right after the other, p50: client/raw" in out


def test_hedging_runs_this_project_beside_aio_request() -> None:
    out = _run("benchmarks.hedging", "--calls", "40", "--warmup", "25", "--variants", "abef")
    for row in ("(a) single attempt", "(b) parallel x2", "(e) aio-request: single", "(f) aio-request: parallel"):
        assert row in out
    assert "(f) p99" in out


def test_hedge_cost_runs_every_client_and_counts_the_hedges() -> None:
    out = _run("benchmarks.hedge_cost", "--threads", "2", "--calls", "80", "--rounds", "1", "--slow-ms", "30")
    for row in ("| 2 | single |", "| 2 | hedged, never fires |", "| 2 | never fires, short tail |", "| 2 | hedged |"):
        assert row in out
    hedged = next(line for line in out.splitlines() if line.startswith("| 2 | hedged |"))
    assert 0.03 <= float(hedged.split("|")[6]) <= 0.1  # 1 in 20 requests is slow: about 0.05 hedges a call
    assert "2 thread(s): a hedge that fires costs the caller" in out


def test_hedge_parts_runs_every_step_from_a_single_attempt_to_the_parallel_strategy() -> None:
    out = _run("benchmarks.hedge_parts", "--max-seconds", "0.5", "--warmup", "5")
    # a row: the step's name, then p50, + µs and step after a raw call, and the same after itself
    rows = re.findall(r"^  (\S.*?)((?:\s+[+-]?\d+\.\d){6})$", out, re.MULTILINE)
    named = [name for name, _ in rows]
    assert named == [
        "single",
        "+ cancellation",
        "+ releasable read",
        "+ call state",
        "+ hedge timer",
        "parallel, no stragglers rule",
        "parallel",
    ]
    assert "parallel / single, p50 after a raw call:" in out
    assert "anchor: raw requests.Session.get, p50" in out


def test_hedge_safety_runs_every_variant_at_a_load() -> None:
    out = _run(
        "benchmarks.hedge_safety",
        *("--loads", "1.0", "--seconds", "1", "--warmup", "0.5", "--calibrate-seconds", "1", "--billing-warmup", "0.5"),
    )
    assert "capacity C (single attempts, closed loop, 8 callers)" in out
    for variant in ("| single |", "| hedged |", "| hedged, no ratio |"):
        assert variant in out


def test_shedding_open_loop_runs_shedding_beside_no_shedding() -> None:
    out = _run(
        "benchmarks.shedding_open_loop",
        *("--rounds", "1", "--seconds", "1", "--warmup", "0.5", "--trickle", "0.5", "--quiet", "0.5"),
        *("--burst-seconds", "1", "--burst-rate", "10"),
    )
    assert "round 1 shedding" in out
    assert "round 1 none" in out
    assert "| light load refused (all rounds; worst round) |" in out
    assert "| burst high p50, first half" in out


class _Probe:
    def __init__(self, rate: float, cpu: float) -> None:
        self.rate, self.cpu, self.throughput = rate, cpu, rate

    @property
    def label(self) -> str:
        return "steer"


@pytest.mark.parametrize(
    ("first_rate", "cpu_per_call", "expected_probes"),
    [
        (300.0, 0.0023, 1),  # 69% at the first try: within 3 points, kept
        (300.0, 0.0020, 2),  # 60% -> 350 calls/s -> 70%
        (900.0, 0.0023, 4),  # a fast calibration moment (the machine full): cut by at most half a step
    ],
)
def test_load_steers_the_rate_to_the_target_cpu(
    monkeypatch: pytest.MonkeyPatch, first_rate: float, cpu_per_call: float, expected_probes: int
) -> None:
    """benchmarks/load.py --target-cpu: the rate ends where the machine's CPU is within 3 points of it."""
    from benchmarks import load

    probes: list[float] = []

    def fake_run(kind: str, number: int, *, rate: float, **_: object) -> _Probe:
        assert kind == "single"
        probes.append(rate)
        return _Probe(rate, min(0.99, rate * cpu_per_call))  # a 2-CPU machine: CPU share linear in the rate

    monkeypatch.setattr(load, "run", fake_run)
    args = load.parse_args(["--target-cpu", "0.7", "--steer-runs", "4"])
    results: list[object] = []
    rate = load.steer(first_rate, billing_url="", billing_pid=0, environment={}, args=args, results=results)  # type: ignore[arg-type]
    assert abs(rate * cpu_per_call - 0.7) <= load.STEER_TOLERANCE
    assert len(results) == len(probes) == expected_probes
    assert all(later / earlier >= 0.5 for earlier, later in itertools.pairwise(probes))


def test_load_steers_by_every_run_so_far_not_by_the_last_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """What four steering runs measured on a VM whose speed moved (2026-12-05, 22:04 UTC): corrected
    by the last run alone (59% CPU at a quiet moment), the pairs ran at 545 calls/s and kept the
    machine 71-91% busy. By the median of the four: about 466 calls/s."""
    from benchmarks import load

    measured = iter([0.862, 0.807, 0.630, 0.587])
    probes: list[float] = []

    def fake_run(kind: str, number: int, *, rate: float, **_: object) -> _Probe:
        probes.append(rate)
        return _Probe(rate, next(measured))

    monkeypatch.setattr(load, "run", fake_run)
    args = load.parse_args(["--target-cpu", "0.7", "--steer-runs", "4"])
    rate = load.steer(584.0, billing_url="", billing_pid=0, environment={}, args=args, results=[])
    assert len(probes) == 4
    ratios = sorted(r / c for r, c in zip(probes, [0.862, 0.807, 0.630, 0.587], strict=True))
    assert rate == pytest.approx(0.7 * (ratios[1] + ratios[2]) / 2)
    assert rate < 500  # by the last run alone: 545


def test_load_steers_no_higher_than_its_ceiling_when_the_caller_s_threads_are_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1 worker of 4 threads served 168 calls/s at 20% CPU: steered to 70% CPU, the rate was 3.5 times
    that, and the single runs queued for 30 s."""
    from benchmarks import load

    probes: list[float] = []

    def fake_run(kind: str, number: int, *, rate: float, **_: object) -> _Probe:
        probes.append(rate)
        return _Probe(rate, rate * 0.0012)  # 20% CPU at 168 calls/s

    monkeypatch.setattr(load, "run", fake_run)
    args = load.parse_args(["--target-cpu", "0.7", "--steer-runs", "4"])
    ceiling = load.STEER_CEILING * 168
    rate = load.steer(117.6, ceiling=ceiling, billing_url="", billing_pid=0, environment={}, args=args, results=[])
    assert rate == ceiling
    assert max(probes) <= ceiling
    assert len(probes) == 2  # the first try, then one at the ceiling: no third run that could go no higher


def test_billing_connections_prints_each_kind_against_keep_alive() -> None:
    out = _run("benchmarks.billing_connections", "--requests", "40", "--rounds", "1", "--settle", "0.2")
    assert "1 rounds of 40 requests of each kind" in out
    for row in ("  keep-alive  ", "  new connection  ", "  abandoned  "):
        assert row in out
    assert "1.00x" in out  # keep-alive against itself
    assert "the hang-up itself (abandoned less new connection):" in out


def test_load_counts_the_hedges_sent_in_stalls_apart_from_the_rest() -> None:
    """benchmarks/load.py's "hedges in stalls": a tenth whose median call took over the threshold is
    a stall; billing's low-priority arrivals (hedges) are counted a call due in it and elsewhere, and
    only from the first arrival billing kept on."""
    from benchmarks import load

    start = 1000.0  # the window's start on billing's wall clock
    calls = [(0.004, t + 0.004, 1) for t in (0.01, 0.02, 0.11, 0.12, 0.21, 0.22)]  # tenths 0, 1, 2: fast
    calls += [(0.09, t + 0.09, 1) for t in (0.31, 0.32)]  # tenth 3: a stall
    arrivals = [{"at": start + t, "priority": p} for t, p in [(0.105, "normal"), (0.215, "low"), (0.33, "low")]]
    arrivals += [{"at": start + 0.34, "priority": "low"}, {"at": start + 0.35, "priority": "normal"}]

    stalls = load.hedges_in_stalls(calls, arrivals, start, threshold=0.05)

    # Tenth 0 is before billing's first kept arrival: left out.
    # Tenths 1-2: 4 calls, 1 hedge; tenth 3 (a stall): 2 calls, 2 hedges.
    assert stalls == load.Stalls(tenths=1, low_a_call_in_stalls=1.0, low_a_call_elsewhere=0.25)
    assert load.hedges_in_stalls(calls, [], start, threshold=0.05) is None


@pytest.mark.parametrize("options", [("--new-values",), ("--no-headers", "--stack", "none")])
def test_middleware_runs_with_new_timeouts_or_none(options: tuple[str, ...]) -> None:
    out = _run("benchmarks.middleware", "--pairs", "100", "--warmup", "20", *options)
    assert "100 interleaved pairs after 20 warm-up pairs" in out
    assert ("then a new timeout each request" in out) == ("--new-values" in options)
    assert "target: p50 at most 1.03x ->" in out


def test_tls_deadline_runs_the_client_beside_plain_requests() -> None:
    out = _run("benchmarks.tls_deadline", "--threads", "2", "--calls", "1", "--rounds", "1", "--async-calls", "4")
    for row in ("  client  ", "  requests  ", "  client, async  "):
        assert row in out
    assert "p99 overshoot, client against requests:" in out


def test_flood_lateness_runs_the_client_beside_a_plain_socket() -> None:
    out = _run("benchmarks.flood_lateness", "--threads", "2", "--rounds", "2", "--calls", "1", "--deadline", "0.1")
    for row in ("| continue | 1 |", "| continue | 2 |", "| continue | all |", "| chunks | all |"):
        assert row in out
    out = _run("benchmarks.flood_lateness", "--threads", "2", "--rounds", "1", "--calls", "1", "--deadline", "0.1",
               "--kinds", "chunks", "--async", "--strategy", "sequential")  # fmt: skip
    assert "| chunks | all |" in out
    out = _run("benchmarks.flood_lateness", "--threads", "2", "--rounds", "1", "--calls", "1", "--deadline", "0.1",
               "--kinds", "gzip")  # fmt: skip
    assert "| gzip | all |" in out


def test_load_reads_a_process_s_system_time_and_every_thread_s_context_switches() -> None:
    """benchmarks/load.py's caller figures: the system share of its workers' CPU and their threads'
    context switches a call, read from /proc for every thread, not the main one alone."""
    import os
    import threading
    import time

    from benchmarks import load

    slept_all, end = threading.Barrier(4), threading.Event()

    def sleep_then_wait() -> None:
        for _ in range(20):
            time.sleep(0.001)  # a switch out each
        slept_all.wait()
        end.wait()

    threads = [threading.Thread(target=sleep_then_wait) for _ in range(3)]
    before = load.figures_of(os.getpid())
    for thread in threads:
        thread.start()
    slept_all.wait()
    slept = load.figures_of(os.getpid())  # read while the three threads are alive
    end.set()
    for thread in threads:
        thread.join()
    assert before is not None
    assert slept is not None
    assert slept.switches - before.switches >= 3 * 20 * 0.9  # the main thread alone switched a few times
    assert 0 <= slept.system_ticks <= slept.cpu_ticks

    def figures(pid: int, cpu: int, system: int, switches: int) -> load.ProcessFigures:
        return load.ProcessFigures(pid, 1, 0, 0, 0, cpu_ticks=cpu, system_ticks=system, switches=switches)

    result = load.RunResult(
        "single", 1, 10.0, 1.0, [(0.01, 0.5, 1)] * 10, {}, 0, 0, 0, 0, 10, 0.5, 0.0,
        start=[figures(1, 100, 10, 1000), figures(2, 50, 5, 500)],
        end=[figures(1, 180, 30, 1100), figures(2, 70, 10, 540), figures(3, 9, 9, 9)],  # 3 came later: not counted
    )  # fmt: skip
    system, switches = result.caller_split()
    assert system == pytest.approx(25 / 100)
    assert switches == pytest.approx(140 / 10)


def test_load_counts_the_slowest_calls_in_flight_while_billing_collected_garbage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """benchmarks/load.py's "billing's full garbage collections": only those in the measured window,
    on its clock, and of the slowest 1% of calls those in flight during one."""
    from benchmarks import load

    start = 1000.0  # the window's start on billing's wall clock
    fast = [(0.002, t + 0.002, 1) for t in (n / 100 for n in range(198))]
    paused = [(0.08, 1.05, 1)]  # 0.97 s to 1.05 s: across the pause at 1.0 s
    late = [(0.07, 1.50, 1)]  # 1.43 s to 1.50 s: slow, but after the pause
    result = load.RunResult("hedged", 2, 100.0, 2.0, fast + paused + late, {}, 0, 0, 0, 0, 200, 0.5, 0.0, [], [])
    pauses = [[start - 0.5, 0.05], [start + 1.0, 0.04], [start + 2.5, 0.06]]  # before, in and after the window

    load.add_billing_figures(
        result, before=None, after=None, start=None, end=None, stats={"gc_pauses": pauses}, wall_start=start
    )

    assert result.billing_gc == [(1.0, 0.04)]
    assert result.slowest_during_gc(0.01) == (1, 2)  # the slowest two calls: one across the pause
    assert result.slowest_during_gc(1.0) == (5, 200)  # and of all, the four started at 1.00-1.03 s
    load.report_billing_gc([result], load.parse_args(["--billing-gc", "frozen"]))
    assert (
        "  2 hedged       1, longest 40.0 ms, 40.0 ms in all; of the slowest 1% of calls (2), 1 were in flight"
        " during one"
    ) in capsys.readouterr().out
    result.billing_gc = None  # billing's stats not read: nothing to count
    assert result.slowest_during_gc(0.01) == (0, 2)

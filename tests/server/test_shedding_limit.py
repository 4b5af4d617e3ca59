"""The adaptive concurrency limit on its own, fed latencies from simulated views on a fake clock.

A simulated view takes ``service`` seconds alone; a CPU view (under the GIL) takes ``service`` times
the number of requests running at once, a waiting (I/O) view the same time however many run.
"""

import itertools
import random
import statistics
from collections.abc import Callable

import pytest

from django_aio_request.server.shedding import AdaptiveLimit, FixedLimit


class Simulation:
    """A closed system holding ``busy`` requests in flight (or the limit, if lower), on a fake clock.

    ``cpu_time``: the CPU time each request reports (None: not reported, as on the async path).
    """

    def __init__(self, limit: AdaptiveLimit, service: float, *, cpu: bool, cpu_time: float | None = None) -> None:
        self.limit = limit
        self.service = service
        self.cpu = cpu
        self.cpu_time = cpu_time
        self.now = 0.0
        self.seen: list[int] = []

    def run(self, requests: int, busy: int = 1000) -> None:
        for _ in range(requests):
            running = max(1, min(busy, self.limit.current))
            rtt = self.service * (running if self.cpu else 1)
            admitted = self.now
            self.now += rtt / running  # requests finish one after another
            self.limit.sample(rtt, running, admitted, self.now, cpu=self.cpu_time)
            self.seen.append(self.limit.current)


class MostlyAlone:
    """Two server threads with CPU views that mostly run one at a time (as under the GIL): a request
    ends beside another only with probability ``overlap``, and then took 1.8 times as long."""

    def __init__(self, limit: AdaptiveLimit, service: float, overlap: float) -> None:
        self.limit = limit
        self.service = service
        self.overlap = overlap
        self.random = random.Random(2)
        self.now = 0.0
        self.seen: list[int] = []

    def run(self, requests: int) -> None:
        for _ in range(requests):
            beside = self.limit.current >= 2 and self.random.random() < self.overlap
            admitted = self.now
            self.now += self.service
            self.limit.sample(self.service * (1.8 if beside else 1.0), 2 if beside else 1, admitted, self.now)
            self.seen.append(self.limit.current)


def growths(seen: list[int]) -> int:
    return sum(after > before for before, after in itertools.pairwise(seen))


def adaptive(**options: float) -> AdaptiveLimit:
    return AdaptiveLimit(now=0.0, jitter=random.Random(1), **options)  # type: ignore[arg-type]


def test_the_first_requests_measure_the_no_load_latency_at_the_minimum_limit() -> None:
    limit = adaptive(minimum=2)
    assert limit.probing
    assert limit.current == 2  # the minimum while probing
    for rtt in (0.011, 0.010, 0.030, 0.012, 0.010):
        limit.sample(rtt, 1, 1.0, 1.0)
    assert not limit.probing
    assert limit.min_rtt == 0.011  # the median: one slow request does not set it
    assert limit.current == 4  # back to the learned limit


def test_one_fast_request_does_not_set_the_latency_without_queueing() -> None:
    # 5 ms views, and now and then a /metrics scrape of 1 ms: the scrape is another view, not the
    # 5 ms view without queueing. Once it set the latency without queueing, every later window of
    # the 5 ms views looked 5 times too slow and the limit fell to 1.
    simulation = Views(adaptive(maximum=64), cpu=0.001, rtt=lambda running, _: 0.004 + 0.001 * running)
    simulation.run(1000)
    before = simulation.limit.current
    assert before >= 8
    simulation.limit.sample(0.001, 1, simulation.now, simulation.now + 0.001, cpu=0.001)  # the scrape
    simulation.run(1000)
    assert simulation.limit.min_rtt == pytest.approx(0.005)
    assert min(simulation.seen[-1000:]) >= before - 1


def test_a_probe_made_of_cheaper_views_is_corrected_by_requests_that_ran_alone() -> None:
    """The first requests after a start were another page's (1 ms); the views then served take
    10 ms and wait (I/O). At a limit of 1 nothing queues in the process, yet every window looked 10
    times too slow: the limit stayed at 1 until the next probe, 30 s later."""
    limit = adaptive(maximum=32, probe_interval=1e9)
    for _ in range(5):
        limit.sample(0.001, 1, 0.0, 0.001)  # the probe
    assert limit.min_rtt == 0.001
    simulation = Simulation(limit, 0.01, cpu=False)
    simulation.run(2000)
    assert limit.min_rtt == pytest.approx(0.01)
    assert limit.current == 32


def test_one_window_of_a_slower_page_served_alone_does_not_let_the_cheap_page_queue() -> None:
    """CPU views of 10 ms keep the limit at 1. A window of a 50 ms page, served alone, looks queued
    as well: it measures again from the requests that come next, rather than take its own latency,
    which let the cheap page's requests queue tenfold until the next probe."""
    limit = adaptive(maximum=32, probe_interval=1e9)
    simulation = Simulation(limit, 0.01, cpu=True, cpu_time=0.01)
    simulation.run(1000)
    assert limit.current == 1
    simulation.service, simulation.cpu_time = 0.05, 0.05
    simulation.run(10)  # one window of the slow page
    simulation.service, simulation.cpu_time = 0.01, 0.01
    simulation.run(1000)
    assert limit.min_rtt == pytest.approx(0.01)
    assert max(simulation.seen[-900:]) == 1


def test_after_views_that_compute_views_that_wait_grow_the_limit_within_seconds() -> None:
    """A review: 10 s of cheap views that compute (the limit at 1, its growths failing, so tried every
    16 windows), then views of 100 ms that wait, 40 callers: the probe measured the new views, and
    still the limit waited out the old patience at 1, 10 requests a second, all else refused (4-12 s
    under uvicorn, high priority included). The patience starts again with the views."""
    limit = adaptive(maximum=64, probe_interval=30.0)
    simulation = Simulation(limit, 0.01, cpu=True)
    while simulation.now < 10.0:
        simulation.run(1, busy=4)
    assert (limit.current, limit._patience) == (1, AdaptiveLimit.MAX_PATIENCE)  # what the review's trace showed
    switched = simulation.now
    simulation.service, simulation.cpu = 0.1, False
    while limit.current < 20:
        simulation.run(1, busy=40)
    assert simulation.now - switched < 5.0  # 8.1 s before (simulated time)
    assert limit.min_rtt == pytest.approx(0.1)


def test_requests_admitted_before_a_probe_do_not_count_in_it() -> None:
    limit = adaptive()
    for _ in range(4):
        limit.sample(0.5, 9, -1.0, 1.0)  # admitted before the probe began at 0.0
    assert limit.probing
    assert limit.min_rtt is None


def test_waiting_views_let_a_used_limit_grow_to_the_maximum() -> None:
    simulation = Simulation(adaptive(maximum=64), 0.02, cpu=False)
    simulation.run(2000)
    assert simulation.limit.current == 64


def test_a_limit_that_is_not_used_does_not_grow() -> None:
    simulation = Simulation(adaptive(maximum=64), 0.02, cpu=False)
    simulation.run(2000, busy=6)  # six threads: never more in flight
    assert simulation.limit.current <= 12


@pytest.mark.parametrize(("tolerance", "highest"), [(1.5, 2), (2.0, 3), (3.0, 4)])
def test_cpu_views_settle_where_latency_stays_within_the_tolerance(tolerance: float, highest: int) -> None:
    simulation = Simulation(adaptive(tolerance=tolerance, maximum=64), 0.01, cpu=True)
    simulation.run(3000)
    settled = simulation.seen[1000:]
    assert max(settled) <= highest + 1
    assert sum(settled) / len(settled) <= highest  # latency about tolerance x the no-load latency
    assert min(settled) >= 1


@pytest.mark.parametrize("overlap", [0.1, 0.2, 0.5])
def test_a_limit_the_threads_never_reach_still_comes_down(overlap: float) -> None:
    # Two threads, so the limit is never reached above 2; judged by the plain mean of mostly lone
    # requests, it stayed at 3-4 and the server's threads all ran requests, none ordered them.
    simulation = MostlyAlone(adaptive(maximum=64), 0.005, overlap)
    simulation.run(3000)
    settled = simulation.seen[1000:]
    assert max(settled) <= 2
    assert sum(settled) / len(settled) <= 1.5


def test_a_growth_that_does_not_hold_is_tried_less_and_less_often() -> None:
    simulation = Simulation(adaptive(maximum=64), 0.01, cpu=True)
    simulation.run(3000)
    # Every growth from 1 to 2 is undone by the next window; it was tried every other window.
    tries = growths(simulation.seen[1000:])
    assert 1 <= tries <= 2000 / (3 * AdaptiveLimit.MAX_PATIENCE) + 5
    # Once the views wait instead (a changed workload), a growth holds and growing resumes at once.
    simulation.cpu = False
    simulation.run(1500)
    assert simulation.limit.current == 64


@pytest.mark.parametrize(("cpu_time", "ceiling"), [(0.010, 1), (0.004, 5), (0.001, 21), (0.0001, 64)])
def test_cpu_time_caps_the_limit_at_what_the_gil_can_run(cpu_time: float, ceiling: int) -> None:
    # Views of 10 ms alone, ``cpu_time`` of it on the CPU, that take turns on the GIL (the rest is
    # waiting, I/O): the CPU time they report says how many can run at once under the GIL:
    # tolerance 1.5 x 10 ms / CPU time, plus two spreads (square roots) of how many wait at once
    # (10 ms / CPU time - 1), each rounded down.
    simulation = Views(adaptive(maximum=64), cpu=cpu_time, rtt=lambda running, _: 0.01 - cpu_time + cpu_time * running)
    simulation.run(2000)
    assert simulation.limit.ceiling == ceiling
    assert max(simulation.seen) <= max(4, ceiling)  # 4: where it starts, before any CPU time was known
    assert simulation.limit.current == ceiling


class Views:
    """Views that report ``cpu`` seconds of CPU time and take ``rtt(running, draw)`` seconds with
    ``running`` requests in flight (``busy``, or the limit if lower); ``draw`` is uniform in [0, 1)."""

    def __init__(
        self, limit: AdaptiveLimit, *, cpu: float, rtt: Callable[[int, float], float], busy: int = 1000
    ) -> None:
        self.limit = limit
        self.cpu, self.rtt, self.busy = cpu, rtt, busy
        self.random = random.Random(3)
        self.now = 0.0
        self.seen: list[int] = []

    def run(self, requests: int) -> None:
        for _ in range(requests):
            running = max(1, min(self.busy, self.limit.current))
            rtt = self.rtt(running, self.random.random())
            admitted = self.now
            self.now += rtt / running
            self.limit.sample(rtt, running, admitted, self.now, cpu=self.cpu)
            self.seen.append(self.limit.current)


def slow_tail(cpu: float, slow: float, wait: float) -> Callable[[int, float], float]:
    """CPU views taking turns on the GIL, of which a share ``slow`` then waits ``wait`` (a slow query)."""
    return lambda running, draw: cpu * running + (wait if draw < slow else 0.0)


def test_a_rare_slow_wait_keeps_enough_requests_at_once_to_keep_the_cpu_busy() -> None:
    # 3 ms of CPU, and 5% wait 150 ms more: on average a request is busy 10.5 ms for 3 ms of CPU, so
    # 3.5 at once keep the CPU busy (Little's law). Judged by the no-load latency alone (3 ms) the
    # ceiling was 1: every slow request then held the only slot for 150 ms, and a server with 4
    # threads served 95 requests a second instead of 225 (benchmarks/hedge_safety.py's view).
    simulation = Views(adaptive(maximum=64), cpu=0.003, rtt=slow_tail(0.003, 0.05, 0.15))
    simulation.run(2000)
    needed, ceilings, waits = [], [], []
    for _ in range(40):
        simulation.run(100)
        needed.append(simulation.limit.needed)
        ceilings.append(simulation.limit.ceiling)
        waits.append(simulation.limit.io or 0.0)
    assert statistics.median(waits) == pytest.approx(0.0075, rel=0.25)  # the mean wait, GIL turns taken out
    assert 3 <= statistics.median(needed) <= 4
    settled = simulation.seen[2000:]
    assert sum(settled) / len(settled) >= 3
    # The ceiling: 1.5 x 3.5 plus two spreads of the 2.5 waiting (2 x 1.6), 5 + 3 = 8, with room for
    # the noisy mean wait (a moving mean of a rare 150 ms).
    assert 6 <= statistics.median(ceilings) <= 9
    assert max(settled) <= max(ceilings) + 1 <= 13
    # The same views without the slow ones: one at a time, as before.
    cpu_only = Views(adaptive(maximum=64), cpu=0.003, rtt=slow_tail(0.003, 0.0, 0.15))
    cpu_only.run(3000)
    assert cpu_only.limit.ceiling == 1
    assert set(cpu_only.seen[1000:]) == {1}


def test_taking_turns_on_the_gil_does_not_shrink_the_limit_but_other_waiting_does() -> None:
    # Requests that report their CPU time: under the GIL, running k at once makes each take about
    # k times its CPU time, which the CPU ceiling bounds; latency beyond that is waiting for
    # something else that concurrency crowds (a lock, a connection pool), and shrinks the limit.
    # 10 ms views, 1 ms of it on the CPU: with k at once each waits for the others' turns on the GIL.
    turns = Views(adaptive(maximum=64), cpu=0.001, rtt=lambda running, _: 0.009 + 0.001 * running)
    turns.run(2000)
    # 1.5 x 10 ms / 1 ms, plus two spreads of the 9 waiting at once (2 x 3), rounded down.
    assert turns.limit.current == turns.limit.ceiling
    assert 19 <= turns.limit.ceiling <= 21
    # Views that barely compute but hold a lock for 10 ms: with k at once each waits k turns.
    crowded = Views(adaptive(maximum=64), cpu=0.0001, rtt=lambda running, _: 0.01 * running)
    crowded.run(3000)
    settled = crowded.seen[1000:]
    assert sum(settled) / len(settled) <= 3


def stalled_downstream(*, report: bool, threads: int = 16) -> list[int]:
    """Views of 1.5 ms of CPU that call another service; of every 100 calls, 8 wait 400 ms for it and
    end together (the downstream stalled). ``report``: the server side tells the limit that wait."""
    limit = adaptive(maximum=64)
    now, seen = 0.0, []
    for number in range(4000):
        running = max(1, min(threads, limit.current))
        waited = 0.4 if number % 100 >= 92 else 0.0
        rtt = 0.0015 * running + waited
        admitted = now
        now += rtt / running
        limit.sample(rtt, running, admitted, now, cpu=0.0015, downstream=waited if report else 0.0)
        seen.append(limit.current)
    return seen[1000:]


def test_waiting_on_another_service_does_not_shrink_the_limit() -> None:
    # A window of ten requests of which eight waited for a stalled downstream looked like queueing
    # here: the limit halved, the slots left filled with requests waiting on the downstream, and the
    # demo's orders refused a third of its calls at 72% CPU (benchmarks/load.py --caller-shedding).
    told = stalled_downstream(report=True)
    assert min(told) >= 16  # as many at once as the threads run: the CPU ceiling counts the wait
    untold = stalled_downstream(report=False)
    assert min(untold) <= 9  # the same latencies judged as queueing here


def test_without_a_gil_or_a_cpu_time_there_is_no_ceiling() -> None:
    free_threaded = Simulation(AdaptiveLimit(maximum=64, gil=False), 0.01, cpu=False, cpu_time=0.01)
    free_threaded.run(2000)
    assert free_threaded.limit.current == 64
    unreported = Simulation(adaptive(maximum=64), 0.01, cpu=False, cpu_time=None)
    unreported.run(2000)
    assert (unreported.limit.cpu, unreported.limit.current) == (None, 64)


def test_the_minimum_limit_wins_over_the_cpu_ceiling() -> None:
    simulation = Simulation(adaptive(minimum=3, maximum=64), 0.01, cpu=False, cpu_time=0.01)
    simulation.run(500)
    assert simulation.limit.ceiling == 1
    assert simulation.limit.current == 3


def test_the_no_load_latency_is_measured_again_after_the_probe_interval() -> None:
    limit = adaptive(probe_interval=10.0, maximum=32)
    simulation = Simulation(limit, 0.01, cpu=False)
    simulation.run(3000)
    assert limit.current == 32
    assert limit.min_rtt == pytest.approx(0.01)
    simulation.service = 0.05  # the view got 5x slower (a slower database), not more crowded
    simulation.run(3000)
    assert limit.min_rtt == pytest.approx(0.05)  # re-measured by a probe
    assert limit.current == 32  # so the limit did not collapse for good


def test_the_limit_keeps_within_its_bounds() -> None:
    simulation = Simulation(adaptive(minimum=3, maximum=5), 0.01, cpu=True)
    simulation.run(2000)
    assert set(simulation.seen) == {3, 4, 5}  # 3 while probing: the minimum


def test_fixed_limit_learns_nothing() -> None:
    limit = FixedLimit(7)
    limit.sample(10.0, 7, 0.0, 10.0)
    assert limit.current == 7
    with pytest.raises(ValueError, match="limit"):
        FixedLimit(0)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="minimum"):
        AdaptiveLimit(minimum=5, maximum=4)
    with pytest.raises(ValueError, match="tolerance"):
        AdaptiveLimit(tolerance=1.0)

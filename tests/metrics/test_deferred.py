"""DeferredObservations: recorded off the caller's thread, nothing lost, nothing recorded twice."""

import ast
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from django_aio_request.metrics.deferred import INTERVAL, DeferredObservations
from tests.support.forking import in_child

ROOT = Path(__file__).resolve().parents[2]
NEVER = 3600.0  # an interval the recording thread does not reach within a test


class Recorder:
    def __init__(self) -> None:
        self.seen: list[object] = []
        self.threads: set[str] = set()

    def __call__(self, observation: object) -> None:
        self.threads.add(threading.current_thread().name)
        self.seen.append(observation)


def test_recorded_by_the_background_thread_within_the_interval() -> None:
    recorder = Recorder()
    deferred = DeferredObservations(recorder, name="test")
    deferred.add(("a", 0.5))
    assert recorder.seen == []  # not on the caller's thread
    waited_until = time.monotonic() + INTERVAL + 2.0
    while not recorder.seen and time.monotonic() < waited_until:
        time.sleep(0.01)
    assert recorder.seen == [("a", 0.5)]
    assert recorder.threads == {"django-aio-request-test"}


def test_flush_records_everything_added_before_it_in_order() -> None:
    recorder = Recorder()
    deferred = DeferredObservations(recorder, name="test", interval=NEVER)
    for n in range(100):
        deferred.add(n)
    deferred.flush()
    assert recorder.seen == list(range(100))
    deferred.flush()
    assert recorder.seen == list(range(100))  # each once


def test_a_failing_record_is_logged_and_the_rest_are_recorded(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    def record(n: int) -> None:
        if n == 2:
            raise ValueError("bad observation")
        seen.append(n)

    deferred = DeferredObservations(record, name="test", interval=NEVER)
    for n in range(5):
        deferred.add(n)
    with caplog.at_level(logging.ERROR, logger="django_aio_request.metrics.deferred"):
        deferred.flush()
    assert seen == [0, 1, 3, 4]
    assert [r.getMessage() for r in caplog.records] == ["recording a test observation failed"]
    assert caplog.records[0].exc_info is not None


def test_many_threads_adding_while_the_thread_records_lose_and_repeat_nothing() -> None:
    recorder = Recorder()
    deferred = DeferredObservations(recorder, name="test", interval=0.001)
    per_thread, threads = 5_000, 8

    def produce(t: int) -> None:
        for n in range(per_thread):
            deferred.add((t, n))

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    deferred.flush()
    assert len(recorder.seen) == per_thread * threads
    assert set(recorder.seen) == {(t, n) for t in range(threads) for n in range(per_thread)}
    seen = [observation for observation in recorder.seen if isinstance(observation, tuple)]
    for t in range(threads):  # each producer's observations in the order it added them
        assert [n for (u, n) in seen if u == t] == list(range(per_thread))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_records_only_its_own_observations() -> None:
    recorder = Recorder()
    deferred = DeferredObservations(recorder, name="test", interval=NEVER)
    deferred.add("parent's")

    def child() -> list[object]:  # what the child records
        deferred.add("child's")
        deferred.flush()
        return list(recorder.seen)

    child_seen = in_child(child)
    # The parent's queued observation was in the child's copy of memory: recorded by the parent only.
    assert child_seen == ["child's"]
    deferred.flush()
    assert recorder.seen == ["parent's"]


def test_queued_observations_are_recorded_at_interpreter_exit() -> None:
    code = """
from django_aio_request.metrics.deferred import DeferredObservations
deferred = DeferredObservations(lambda o: print("recorded", o, flush=True), name="exit", interval=3600)
deferred.add(1)
deferred.add(2)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["recorded 1", "recorded 2"]


def test_add_does_not_wait_for_a_start_under_way_on_its_own_thread() -> None:
    """``add`` may run inside the garbage collector (a breaker's finalizer, metrics/breaker.py), on
    a thread already starting the recording thread: it must not wait for the lock that thread holds."""
    recorder = Recorder()
    deferred = DeferredObservations(recorder, name="test")
    returned = threading.Event()

    def add_while_starting() -> None:
        with deferred._start_lock:  # as in _start(), when a finalizer runs there
            deferred.add("inside")
            returned.set()
        deferred.add("after")  # starts the thread, which records both

    threading.Thread(target=add_while_starting, daemon=True).start()
    assert returned.wait(5)
    waited_until = time.monotonic() + INTERVAL + 2.0
    while len(recorder.seen) < 2 and time.monotonic() < waited_until:
        time.sleep(0.01)
    assert recorder.seen == ["inside", "after"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_the_thread_records_gets_prometheus_locks_free() -> None:
    """prometheus_client's locks are not made anew in a forked child: one the recording thread held
    at the fork stayed held there for ever, and the child hung at its first metric. The fork now
    waits for the record under way (one, not the whole queue)."""
    prometheus_client = pytest.importorskip("prometheus_client")
    counter = prometheus_client.Counter("test_fork_guard_total", "A counter of this test.", registry=None)
    value_lock = counter._value._lock  # what counter.inc() holds (MutexValue, a lock per value)
    recording = threading.Event()

    def record(observation: object) -> None:  # as an inc() half done when the fork comes
        with value_lock:
            recording.set()
            time.sleep(0.3)

    deferred = DeferredObservations(record, name="test")
    deferred.add("slow")
    assert recording.wait(5)

    def child() -> bool:  # whether the child can record: inc() from a thread, waited for generously
        done = threading.Event()

        def record_one() -> None:
            counter.inc()
            done.set()

        threading.Thread(target=record_one, daemon=True).start()
        return done.wait(10)

    assert in_child(child) is True


# In prometheus_client's multiprocess mode (one lock for every value of the process): a worker whose
# recording thread is busy forks children that each make calls opening their circuit (a breaker
# transition, recorded inline on the calling thread). Prints 1 if a child was still running well
# past its calls' deadlines, else 0.
FORKS_WHILE_RECORDING = """
import logging, multiprocessing, threading, time
logging.disable(logging.WARNING)
import django_aio_request as dar
from django_aio_request.metrics.client import ClientMetrics
from tests.support.loopback import free_port

client = dar.setup(
    endpoint=f"http://127.0.0.1:{free_port()}/", timeout=1.0, safe_method_strategy=dar.single_attempt_strategy(),
    circuit_breaker=dar.DefaultCircuitBreaker(
        break_duration=5, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    ),
)
busy = ClientMetrics("http://busy.example/")
stop = threading.Event()

def other_calls():
    while not stop.is_set():
        for _ in range(2000):
            busy.call("GET", "things/{id}", 200, circuit_breaker=False, attempt=0, elapsed=0.01)
        time.sleep(0.001)

threading.Thread(target=other_calls, daemon=True).start()
time.sleep(0.3)

def child():
    for _ in range(4):  # a refused endpoint: the circuit opens at the third
        with client.request(dar.get("x")):
            pass

hung = 0
for i in range(12):
    time.sleep(0.011 * (i % 7))
    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(20)  # 4 calls of at most 1 s each
    if process.is_alive():
        hung += 1
        process.kill()
        process.join()
        break  # one is enough
stop.set()
print(hung)
"""


FORKS_WHILE_THE_PRIORITY_WORKER_RECORDS = """
import os, signal, threading, time
from django_aio_request.metrics import server as metrics
from django_aio_request.server import priority_worker

stop = threading.Event()
queue_length = priority_worker._QueueLength()

def requests_queued():  # what gunicorn's poller and pool threads record for each request
    i = 0
    while not stop.is_set():
        i += 1
        queue_length(4, i % 7)
        priority_worker._queue_wait(4, 0.001)

for _ in range(2):
    threading.Thread(target=requests_queued, daemon=True).start()
hung = 0
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)  # a child that hangs at its first metric dies of SIGALRM
        metrics.shed("low", "capacity")
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    hung += os.WIFSIGNALED(status)
    time.sleep(0.001)
stop.set()
print(hung)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.timeout(660)
@pytest.mark.parametrize(
    "script",
    [FORKS_WHILE_RECORDING, FORKS_WHILE_THE_PRIORITY_WORKER_RECORDS],
    ids=["the-recording-thread", "the-priority-worker-s-queue"],
)
def test_in_multiprocess_mode_children_forked_while_metrics_are_recorded_do_not_hang(
    script: str, tmp_path: Path
) -> None:
    # The second: PriorityThreadWorker records its queue's length and wait on every request, from the
    # poller and the pool's threads; in multiprocess mode prometheus_client has one lock for every
    # value, and a child forked while it was held hung at its first metric (a review: 9 and 19
    # children of 10 and 20).
    done = _run_in_multiprocess_mode(script, tmp_path, timeout=600)
    assert done.stdout.split() == ["0"], "children hung: " + done.stdout


MULTIPROCESSING_WORKERS = """
import multiprocessing, os
from django.conf import settings
settings.configure()
import django_aio_request as dar
from prometheus_client import CollectorRegistry, multiprocess
from tests.support.loopback import LoopbackServer

server = LoopbackServer()
server.route("/x", lambda h: h.reply(200, b"ok"))

def job(_=None):
    client = dar.setup(endpoint=server.url)
    for _ in range(5):
        with client.request(dar.get("x")) as response:
            assert response.status == 200
    # returns: multiprocessing ends the child with os._exit(), which runs no atexit

if os.environ["PARENT_FIRST"] == "1":  # the package imported before the fork, not in the workers
    dar.setup(endpoint=server.url).close()
context = multiprocessing.get_context("fork")
if os.environ.get("WORKERS") == "pool":  # the usual idiom: __exit__ terminates the workers (SIGTERM)
    with context.Pool(4) as pool:
        pool.map(job, range(4), chunksize=1)
    workers = pool._pool
    for worker in workers:
        worker.join()
else:
    workers = [context.Process(target=job) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
counted = sum(
    sample.value
    for family in registry.collect() if family.name == "aio_request_latency"
    for sample in family.samples if sample.name.endswith("_count")
)
print([worker.exitcode for worker in workers], int(counted))
server.close()
"""


@pytest.mark.parametrize("parent_first", [True, False], ids=["imported before the fork", "imported in the worker"])
def test_calls_of_a_multiprocessing_worker_ended_by_os_exit_are_recorded(tmp_path: Path, parent_first: bool) -> None:
    """docs/metrics.md: nothing is dropped. A multiprocessing child forked from this process ends
    with os._exit(), which runs no atexit: the calls of its last 0.1 s were never recorded (0 of 20
    for four workers of 5 calls each)."""
    done = _run_in_multiprocess_mode(MULTIPROCESSING_WORKERS, tmp_path, PARENT_FIRST=str(int(parent_first)))
    assert done.stdout.strip() == "[0, 0, 0, 0] 20", done.stdout + done.stderr


@pytest.mark.parametrize("parent_first", [True, False], ids=["imported before the fork", "imported in the worker"])
def test_calls_of_pool_workers_a_with_block_terminates_are_recorded(tmp_path: Path, parent_first: bool) -> None:
    """``with Pool() as pool:`` ends its workers with terminate(): SIGTERM to those that have not
    ended yet, which skips atexit and the multiprocessing finalizers alike; their queued calls were
    lost (5 to 15 of 20 in 4 of 5 runs here). A pool worker records its calls as it makes them."""
    for run in range(3):
        directory = tmp_path / str(run)
        directory.mkdir()
        done = _run_in_multiprocess_mode(
            MULTIPROCESSING_WORKERS, directory, PARENT_FIRST=str(int(parent_first)), WORKERS="pool"
        )
        exit_codes, counted = done.stdout.strip().rsplit(" ", 1)
        assert set(ast.literal_eval(exit_codes)) <= {0, -signal.SIGTERM}, done.stdout + done.stderr
        assert counted == "20", done.stdout + done.stderr


def _run_in_multiprocess_mode(
    script: str, directory: Path, timeout: float = 120, **env: str
) -> "subprocess.CompletedProcess[str]":
    """``script`` run by a Python of its own, prometheus_client in multiprocess mode on ``directory``;
    it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


POOL_WORKER_DROPPING_BREAKERS = """
import multiprocessing, os
from django_aio_request.metrics.breaker import watch_breaker

class Breaker:  # what watch_breaker needs of one, in a reference cycle: freed by the cyclic collector
    def __init__(self):
        self.state = {}
        self.me = self
    def add_listener(self, listener):
        self.listener = listener

def job(_=None):
    for _ in range(20000):  # clients dropped without close(): the collector frees their breakers
        watch_breaker(Breaker(), "http://billing/")
    return "done"

with multiprocessing.get_context("fork").Pool(1) as pool:
    print(pool.apply_async(job).get(timeout=30))
"""


def test_a_pool_worker_whose_collector_frees_watched_breakers_does_not_hang(tmp_path: Path) -> None:
    """A pool worker records inline, but a breaker freed by the garbage collector is queued: the
    collector runs its callback on a thread that may hold the lock the recording takes, and recorded
    inline there the worker hung (3 of 3 runs in a review)."""
    done = _run_in_multiprocess_mode(POOL_WORKER_DROPPING_BREAKERS, tmp_path, timeout=90)
    assert done.stdout.strip() == "done", done.stdout + done.stderr

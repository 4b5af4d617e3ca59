"""The breaker state gauge counts the breakers that are alive: closed with their client, or
garbage-collected with it when the client is dropped without ``close()``."""

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import django_aio_request as dar
from django_aio_request.metrics import breaker as breaker_metrics
from django_aio_request.metrics.deferred import INTERVAL
from tests.support.breaker_gauge import breaker_states, get, until_both_workers_served
from tests.support.breaker_workers import breaker_workers
from tests.support.forking import in_child
from tests.support.loopback import LoopbackServer, replies
from tests.support.steps import run_with_step

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def endpoint(server: LoopbackServer) -> str:
    """A failing endpoint whose URL labels no series yet (see tests/conftest.py's server)."""
    server.route("/x", replies(503))
    return server.url


def build(endpoint: str) -> dar.Client:
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=600, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    )
    return dar.setup(endpoint=endpoint, safe_method_strategy=dar.single_attempt_strategy(), circuit_breaker=breaker)


def open_breaker(client: dar.Client) -> None:
    for _ in range(3):
        with client.request(dar.get("x")):
            pass
    assert client.circuit_breaker is not None
    assert str(client.circuit_breaker.state[client.endpoint].value) == "open"


def gauge(endpoint: str, state: str) -> float | None:
    """Read as a scrape in this process does (which records what is queued first)."""
    labels = {"request_endpoint": endpoint, "state": state}
    return REGISTRY.get_sample_value("aio_request_circuit_breaker_state", labels)


def unflushed(endpoint: str, state: str) -> float:
    """The gauge's own value, without recording the queues first (what another process's scrape
    reads from this one's file in multiprocess mode)."""
    child = breaker_metrics.breaker_state.labels(endpoint, state)
    return float(child._value.get())  # type: ignore[attr-defined]


def test_clients_dropped_without_close_leave_the_gauge(endpoint: str) -> None:
    """Before, they were counted for the life of the process: closed 3, open 1 with no client left,
    and the open circuit's alert fired forever."""
    for _ in range(3):
        build(endpoint)  # dropped at once
    client = build(endpoint)
    open_breaker(client)
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 1)

    del client
    gc.collect()
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 0)


def test_a_dropped_client_leaves_the_gauge_within_the_interval_without_a_scrape(endpoint: str) -> None:
    client = build(endpoint)
    open_breaker(client)
    assert unflushed(endpoint, "open") == 1
    del client
    gc.collect()
    deadline = time.monotonic() + INTERVAL + 2.0
    while unflushed(endpoint, "open") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert unflushed(endpoint, "open") == 0  # the recording thread took it out


def test_a_breaker_collected_while_its_thread_holds_the_gauge_lock_does_not_deadlock(endpoint: str) -> None:
    """A breaker dies on whichever thread drops it, maybe one in the middle of a transition (holding
    the module's lock, not reentrant): its finalizer only queues."""
    client = build(endpoint)
    done = threading.Event()

    def drop_holding_the_lock() -> None:
        nonlocal client
        with breaker_metrics._lock:
            del client
            gc.collect()  # the breaker's finalizer runs here, on this thread, now
        done.set()

    thread = threading.Thread(target=drop_holding_the_lock, daemon=True)
    thread.start()
    thread.join(5)
    assert done.is_set()
    assert gauge(endpoint, "closed") == 0


def test_a_closed_client_is_taken_out_once_even_when_collected_later(endpoint: str) -> None:
    client = build(endpoint)
    other = build(endpoint)
    assert gauge(endpoint, "closed") == 2
    client.close()
    assert gauge(endpoint, "closed") == 1
    del client
    gc.collect()
    assert gauge(endpoint, "closed") == 1  # other's
    other.close()


def build_sharing(
    endpoint: str, breaker: "dar.DefaultCircuitBreaker[str, dar.Response]", *, metrics: bool = True
) -> dar.Client:
    return dar.setup(
        endpoint=endpoint, safe_method_strategy=dar.single_attempt_strategy(), circuit_breaker=breaker, metrics=metrics
    )


@pytest.mark.parametrize("other_metrics", [False, True], ids=["other-without-metrics", "other-with-metrics"])
def test_closing_one_of_two_clients_sharing_a_breaker_keeps_it_in_the_gauge(endpoint: str, other_metrics: bool) -> None:
    """Before, closing either client took the shared breaker out (even one built with metrics=False,
    which records none): the live client's circuit opened and the gauge said 0 open, 0 closed."""
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=600, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    )
    live = build_sharing(endpoint, breaker)
    other = build_sharing(endpoint, breaker, metrics=other_metrics)
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (1, 0)  # one breaker, counted once
    other.close()
    other.close()  # a second close ends no other client's watch
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (1, 0)
    open_breaker(live)
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 1)
    live.close()
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 0)  # the last watcher took it out


def test_one_breaker_for_two_endpoints_exports_both_from_setup(endpoint: str, server: LoopbackServer) -> None:
    """The breaker keys its state by endpoint, so one breaker may serve the clients of two. The second
    endpoint had no state series and no transitions at 0 until its first transition, which then
    started its counter at 1: the documented increase() query missed its first opening."""
    other = endpoint.rstrip("/") + "/other/"
    server.route("/other/x", replies(503))
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=600, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    )
    first, second = build_sharing(endpoint, breaker), build_sharing(other, breaker)
    try:
        transitions = "aio_request_circuit_breaker_transitions_total"
        for url in (endpoint, other):
            assert (gauge(url, "closed"), gauge(url, "open")) == (1, 0)
            labels = {"request_endpoint": url, "from_state": "closed", "to_state": "open"}
            assert REGISTRY.get_sample_value(transitions, labels) == 0
        open_breaker(second)
        assert (gauge(other, "closed"), gauge(other, "open")) == (0, 1)
        assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (1, 0)
    finally:
        first.close()
        second.close()


def _series_of(url: str) -> list[str]:
    """Every breaker series labelled with ``url``, as a scrape of this process shows them."""
    from prometheus_client import generate_latest

    return [
        line
        for line in generate_latest(REGISTRY).decode().splitlines()
        if f'request_endpoint="{url}"' in line and "circuit_breaker" in line
    ]


def test_a_metrics_false_client_sharing_a_breaker_shows_no_series_of_its_endpoint(
    endpoint: str, server: LoopbackServer
) -> None:
    """Its circuit's state and transitions were exported once it moved, through the breaker its
    neighbour with metrics watches (a review: 45 series, "open" at 1, its alert fired)."""
    quiet_url = endpoint.rstrip("/") + "/quiet/"
    server.route("/quiet/x", replies(503))
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=600, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    )
    loud, quiet = build_sharing(endpoint, breaker), build_sharing(quiet_url, breaker, metrics=False)
    try:
        open_breaker(quiet)
        open_breaker(loud)
        assert _series_of(quiet_url) == []
        assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 1)
        labels = {"request_endpoint": endpoint, "from_state": "closed", "to_state": "open"}
        assert REGISTRY.get_sample_value("aio_request_circuit_breaker_transitions_total", labels) == 1
    finally:
        quiet.close()
        loud.close()
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 0)


def test_closing_the_client_of_one_endpoint_of_a_shared_breaker_takes_that_endpoint_out_only(
    endpoint: str, server: LoopbackServer
) -> None:
    other = endpoint.rstrip("/") + "/other/"
    server.route("/other/x", replies(503))
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=600, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    )
    first, second = build_sharing(endpoint, breaker), build_sharing(other, breaker)
    open_breaker(second)
    second.close()
    assert (gauge(other, "closed"), gauge(other, "open")) == (0, 0)  # was open 1 for a closed client
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (1, 0)
    open_breaker(second)  # used again: watched again, its state exported as it is now
    assert (gauge(other, "closed"), gauge(other, "open")) == (0, 1)
    first.close()
    second.close()
    assert [gauge(url, state) for url in (endpoint, other) for state in ("closed", "open")] == [0, 0, 0, 0]


def test_setup_creates_the_budget_series_under_the_fork_guard(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork while setup() created the retry budget's series (prometheus-client's lock held, one
    for the whole process in multiprocess mode) left the child's first metric waiting for ever:
    the series is created holding the guard a fork takes first (metrics/deferred.py)."""
    from django_aio_request.metrics import client as client_metrics
    from django_aio_request.metrics import deferred

    held: list[bool] = []
    counter = client_metrics.client_retry_budget_exhausted

    class Watched:
        def labels(self, *values: str) -> object:
            held.append(deferred._guard._is_owned())  # type: ignore[attr-defined]
            return counter.labels(*values)

    monkeypatch.setattr(client_metrics, "client_retry_budget_exhausted", Watched())
    dar.setup(endpoint=endpoint, safe_method_strategy=dar.single_attempt_strategy()).close()
    assert held == [True]


def test_a_client_closed_and_used_again_counts_each_transition_once(endpoint: str) -> None:
    client = build(endpoint)
    client.close()
    open_breaker(client)  # its first call watches the breaker again
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 1)
    labels = {"request_endpoint": endpoint, "from_state": "closed", "to_state": "open"}
    assert REGISTRY.get_sample_value("aio_request_circuit_breaker_transitions_total", labels) == 1
    client.close()
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_before_a_dropped_breaker_was_taken_out_does_not_count_it(endpoint: str) -> None:
    """The parent's queue is the parent's to record; the child's gauge is a copy of the parent's
    (no multiprocess mode here) that still counted the breaker: the child sets it anew."""
    keep = build(endpoint)
    client = build(endpoint)
    open_breaker(client)
    with breaker_metrics._dropped._flush_lock:  # the parent's recording thread cannot take it out yet
        del client
        gc.collect()
        assert breaker_metrics._dropped.pending() == 1
        in_child_gauge = in_child(lambda: (gauge(endpoint, "closed"), gauge(endpoint, "open")))
    assert in_child_gauge == [1, 0]  # keep's, in the child
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (1, 0)  # and in the parent
    keep.close()


# gunicorn --preload in multiprocess mode: the workers inherit the master's client


PRELOAD_APP = """
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
import tests.support.urls_breaker_workers  # noqa: E402,F401  (the URLconf and its client, loaded in the master)
"""


@pytest.fixture
def preloaded(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """gunicorn --preload with 2 workers and PROMETHEUS_MULTIPROC_DIR; its URL and the client's endpoint."""
    if shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("gunicorn is not installed (pip install -e '.[test]')")

    def gunicorn(port: int) -> list[str]:
        return [str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "testproject/gunicorn.conf.py"),
                "--preload", "--bind", f"127.0.0.1:{port}", "preload_app:application"]  # fmt: skip

    with breaker_workers(tmp_path, "preload", PRELOAD_APP, gunicorn, {"GUNICORN_WORKERS": "2"}) as served:
        yield served


@pytest.mark.timeout(120)
def test_gunicorn_preload_workers_count_the_master_s_client_as_their_own(preloaded: tuple[str, str]) -> None:
    """Each worker's copy of the client made in the master counts in the worker's own values. Before,
    prometheus_client started a worker's values at 0 while the inherited count said "closed": a worker
    opening its breaker wrote closed -1, and with both open the gauge said closed -1, open 2. The
    master's client counts too, as one more closed breaker (it makes no calls)."""
    url, endpoint = preloaded

    def states() -> dict[str, float]:
        return breaker_states(url, endpoint)

    deadline = time.monotonic() + 30
    until_both_workers_served(url, deadline)
    # A worker counts its copy once it records metrics (here, the requests it served, within 0.1 s).
    while states()["closed"] < 3:
        assert time.monotonic() < deadline, states()
        time.sleep(0.05)
    assert states() == {"closed": 3, "open": 0, "half_open": 0}  # the master's and both workers'
    first = json.loads(get(url + "open"))
    assert first["status"] == 502
    assert states() == {"closed": 2, "open": 1, "half_open": 0}

    opened = {first["pid"]}
    while len(opened) < 2:  # concurrent and slow enough that the other worker serves some
        assert time.monotonic() < deadline, "one worker served everything"
        with ThreadPoolExecutor(2) as pool:
            opened |= {json.loads(body)["pid"] for body in pool.map(get, [url + "open?sleep=0.2"] * 4)}
    assert states() == {"closed": 1, "open": 2, "half_open": 0}


FORKS = """
import os, sys
import django_aio_request as dar
from django_aio_request import metrics as all_metrics
client = dar.setup(endpoint="http://127.0.0.1:9/", circuit_breaker=dar.DefaultCircuitBreaker(
    break_duration=60, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5))
quiet = os.fork()
if quiet == 0:  # records nothing (a subprocess's preexec_fn, say): leaves no file of its own
    os._exit(0)
os.waitpid(quiet, 0)
recording = os.fork()
if recording == 0:  # records metrics: counts its copy of the breaker in a file of its own
    all_metrics.flush()
    os._exit(0)
os.waitpid(recording, 0)
print(quiet, recording)
"""


def test_in_multiprocess_mode_a_forked_child_counts_its_breakers_once_it_records_metrics(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", FORKS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    quiet, recording = done.stdout.split()
    files = {path.name for path in tmp_path.iterdir()}
    assert f"gauge_livesum_{quiet}.db" not in files, files
    assert f"gauge_livesum_{recording}.db" in files, files


def test_an_opening_shared_through_the_cache_is_counted_by_every_process_that_learns_it(endpoint: str) -> None:
    """What docs/metrics.md's "how often it opened" query says: with ``CIRCUIT_BREAKER_STATE``, each
    process's breaker counts the opening it learns from the cache, so a sum over processes counts
    one opening once per process (two stores in one process stand for two processes here)."""
    import uuid

    from django.core.cache import caches

    from django_aio_request.breaker.cache_store import CacheCircuitStore
    from tests.support.redis_server import require_redis

    require_redis()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    made = []
    for _ in range(2):
        store = CacheCircuitStore("shared", connect=lambda: caches.create_connection("shared"), namespace=namespace)
        breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
            break_duration=600, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5, store=store
        )
        made.append(
            dar.setup(endpoint=endpoint, safe_method_strategy=dar.single_attempt_strategy(), circuit_breaker=breaker)
        )
    a, b = made
    try:
        with b.request(dar.get("x")):  # b has seen the endpoint (a process that never called it learns nothing)
            pass
        open_breaker(a)
        assert b.circuit_breaker is not None
        deadline = time.monotonic() + 5
        while str(b.circuit_breaker.state[b.endpoint].value) != "open":
            assert time.monotonic() < deadline, "b never learned the opening"
            time.sleep(0.05)
        labels = {"request_endpoint": endpoint, "from_state": "closed", "to_state": "open"}
        assert REGISTRY.get_sample_value("aio_request_circuit_breaker_transitions_total", labels) == 2
    finally:
        for client in made:
            client.close()


def test_a_breaker_turning_from_open_to_half_open_is_never_read_in_no_state(endpoint: str) -> None:
    """The gauge let go of the old state before it counted the new one: a scrape between the two
    writes (another process's, reading this one's file) saw the breaker neither open nor half-open,
    which sets AioRequestCircuitOpen's ``for`` back at every probe (a review). Each step of the move
    is tried in turn, the gauge read there as such a scrape reads it."""
    client = build(endpoint)
    open_breaker(client)
    breaker = client.circuit_breaker
    seen: list[float] = []

    def scrape() -> None:
        seen.append(unflushed(endpoint, "open") + unflushed(endpoint, "half_open"))

    def move(state: str) -> None:
        breaker_metrics._move(breaker, endpoint, state)

    steps = run_with_step(lambda: move("half_open"), breaker_metrics._move.__code__, None, scrape)
    for step in range(steps):
        move("open")
        run_with_step(lambda: move("half_open"), breaker_metrics._move.__code__, step, scrape)
    assert len(seen) == steps
    assert min(seen) >= 1, seen
    client.close()

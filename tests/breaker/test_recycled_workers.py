"""gunicorn workers recycled (``--max-requests``) while a circuit other processes opened is open, the
breakers sharing their state through Django's cache on a real Redis (docs/circuit-breaker.md).

Each test runs a real gunicorn (gthread, 4 threads a worker) whose views call a loopback downstream
that answers 500 and counts the requests it gets, by the pid of the process that sent them. The
circuit is opened before gunicorn starts, by this process, and written to Redis: every request the
downstream then gets from a worker went through a circuit the others had opened.
"""

import contextlib
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from django_aio_request import CircuitState, DefaultCircuitBreaker, get
from django_aio_request.conf.building import build_client
from django_aio_request.conf.schema import read_settings
from tests.support.loopback import LoopbackServer, free_port, stop_server, wait_until_listening
from tests.support.redis_server import require_redis

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).parent / "gunicorn"
# Long enough a break that no probe is due during a test; two failures trip it.
BREAKER = {"BREAK_DURATION": 120, "SAMPLING_DURATION": 10, "MINIMUM_THROUGHPUT": 2, "FAILURE_THRESHOLD": 0.5}

SETTINGS = """
from settings.test import *  # noqa: F403

DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {database!r}}}}}
ROOT_URLCONF = "recycled_app"
# The Redis, key prefix and options of the cache this test's process opened the circuit in.
CACHES["breakers"] = {{**CACHES["shared"], "BACKEND": {backend!r}}}
AIO_REQUEST = {aio_request!r}
"""

# The served project: /call calls the downstream once through the client (its strategy's retries
# included) and answers the serving worker's pid and what the client answered. With --preload the
# master imports it: it looks the client up and calls it once, then (the test's precondition, taken
# on a loaded machine too) waits until its breaker knows the circuit open before gunicorn forks.
APP = """
import json, os, sys, time

from django.core.cache.backends.redis import RedisCache
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path
from django.utils.functional import cached_property

from django_aio_request import CircuitState, clients, get

NAME = os.environ["TEST_CLIENT"]


class SlowFirstRead(RedisCache):
    # Each process's first use connects after TEST_SLOW_FIRST_READ seconds, as a loaded machine's
    # may: longer than the client build's wait for the first read (0.25 s).
    @cached_property
    def _cache(self):
        time.sleep(float(os.environ["TEST_SLOW_FIRST_READ"]))
        return RedisCache._cache.func(self)


def call(request):
    with clients[NAME].request(get(f"down?by={os.getpid()}")) as response:
        answer = {"pid": os.getpid(), "status": response.status, "breaker": "X-Circuit-Breaker" in response.headers}
    return HttpResponse(json.dumps(answer))


urlpatterns = [path("call", call)]
application = get_wsgi_application()

if os.environ.get("TEST_MASTER_CALLS"):
    client = clients[NAME]
    with client.request(get(f"down?by={os.getpid()}")) as response:
        print(f"master {os.getpid()} called: {response.status}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 30
    while client.circuit_breaker.state.get(client.endpoint) is not CircuitState.OPEN:
        assert time.monotonic() < deadline, "the master never read the circuit open"
        time.sleep(0.02)
"""


@pytest.fixture
def downstream(server: LoopbackServer) -> LoopbackServer:
    server.route("/down", lambda h: h.reply(500))
    return server


def sent_by(downstream: LoopbackServer) -> Counter[int]:
    """The requests the downstream got, by the pid of the process that sent them."""
    by = Counter[int]()
    for received in downstream.received("/down"):
        by[int(urllib.parse.parse_qs(urllib.parse.urlsplit(received.path).query)["by"][0])] += 1
    return by


def open_circuit(name: str, url: str) -> None:
    """Open the circuit of client ``name`` calling ``url`` in the shared Redis, as other workers did."""
    opener = {"ENDPOINT": url, "CIRCUIT_BREAKER": BREAKER, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
    config, problems = read_settings({"CLIENTS": {name: opener}, "CIRCUIT_BREAKER_STATE": "shared"})
    assert config is not None, problems
    client = build_client(config.clients[name], None)
    try:
        for _ in range(2):
            with client.request(get("down?by=0")) as response:
                assert response.status == 500
        breaker = client.circuit_breaker
        assert isinstance(breaker, DefaultCircuitBreaker)
        assert breaker.state[url] is CircuitState.OPEN
        breaker.store.sync()  # type: ignore[attr-defined]  # the block is in Redis now
    finally:
        client.close()


@contextlib.contextmanager
def gunicorn(
    tmp_path: Path, downstream: LoopbackServer, backend: str, *options: str, master_calls: bool, slow: float = 0.0
) -> Iterator[tuple[str, Path]]:
    """A gunicorn of the project above, its client calling ``downstream`` through a circuit already open
    in Redis, its breakers' cache of ``backend`` (whose first use in each process takes ``slow``
    seconds if it is ``SlowFirstRead``); yields its URL and its log."""
    require_redis()
    if not GUNICORN.exists():
        pytest.skip("gunicorn is not installed (pip install -e '.[test]')")
    name = f"billing_{uuid.uuid4().hex[:8]}"  # keys of its own in the shared Redis
    open_circuit(name, downstream.url)
    aio_request = {
        "SERVICE_NAME": "orders",
        "CIRCUIT_BREAKER_STATE": "breakers",
        "CLIENTS": {name: {"ENDPOINT": downstream.url, "CIRCUIT_BREAKER": BREAKER}},
    }
    database = str(tmp_path / "db.sqlite3")
    (tmp_path / "recycled_settings.py").write_text(
        SETTINGS.format(database=database, backend=backend, aio_request=aio_request)
    )
    (tmp_path / "recycled_app.py").write_text(APP)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "recycled_settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")])),
        "TEST_CLIENT": name,
        "TEST_SLOW_FIRST_READ": str(slow),
    }
    # The app's tables, as in a deployed service (the client's build reads admin's overrides).
    migrate = [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"]
    done = subprocess.run(migrate, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    # No control socket: gunicorn's default path is one for every gunicorn of the user (tests run at once).
    command = [str(GUNICORN), "-k", "gthread", "--threads", "4", "--no-control-socket", "--bind",
               f"127.0.0.1:{port}", *options, "recycled_app:application"]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    env["TEST_MASTER_CALLS"] = "1" if master_calls else ""  # not migrate's: it imports the URLconf too
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_listening(process, port, "gunicorn", seconds=60)
        except RuntimeError as error:
            raise RuntimeError(f"{error}:\n{log.read_text()}") from None
        yield f"http://127.0.0.1:{port}/", log
    finally:
        stop_server(process)


def call(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "call", timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "backend",
    ["django.core.cache.backends.redis.RedisCache", "recycled_app.SlowFirstRead"],
    ids=["redis", "redis-slow-first-read"],
)
def test_recycled_workers_of_a_preloaded_master_that_called_send_nothing_through_a_circuit_others_opened(
    tmp_path: Path, downstream: LoopbackServer, backend: str
) -> None:
    """docs/circuit-breaker.md: with ``--preload`` and a master that called the client once before
    forking (so its breaker had read the cache), each worker is forked knowing the circuit is open:
    recycled workers send it nothing, also where each process's first read of the cache takes
    longer than the client build's wait (``redis-slow-first-read``; without ``--preload``, a gthread
    worker's first requests then go through, see the next test)."""
    options = ["--preload", "--workers", "2", "--max-requests", "4", "--max-requests-jitter", "0"]
    # A slow first read also holds each recycled worker's exit (its last round) by as much.
    slow, requests = (1.0, 24) if backend.endswith("SlowFirstRead") else (0.0, 48)
    with gunicorn(tmp_path, downstream, backend, *options, master_calls=True, slow=slow) as (url, log):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: call(url), range(requests)))
        text = log.read_text()
    (master,) = [int(line.split()[1]) for line in text.splitlines() if line.startswith("master ")]
    workers = {answer["pid"] for answer in answers}
    # The 2 first workers and at least one recycled one served (4 to 12 workers served in runs; a
    # worker takes the connections it accepted before its 4th request ended).
    assert len(workers) >= 3, (workers, text)
    assert {(answer["status"], answer["breaker"]) for answer in answers} == {(502, True)}, answers
    sent = sent_by(downstream)
    assert sent[0] == 2  # the opener's
    # None of the workers': at most the master's call, had its own first read come after its build's
    # wait (here, where that read is slow), and its retries until its own failures tripped it.
    assert set(sent) <= {0, master}, (sent, workers, master)


@pytest.mark.timeout(120)
def test_a_gthread_worker_whose_first_read_outlasts_the_build_s_wait_sends_calls_through_a_circuit_others_opened(
    tmp_path: Path, downstream: LoopbackServer
) -> None:
    """docs/circuit-breaker.md: without ``--preload``, a worker builds the client on its first request
    and waits for its first read of the cache at most 0.25 s; when that runs out (a loaded machine,
    here a cache whose first use takes 2 s), its first requests, one a thread, call by what it knows
    (closed): they reach the downstream through the circuit the others opened, with their retries,
    until the read lands or the worker's own failures trip it."""
    options = ["--workers", "1"]
    backend = "recycled_app.SlowFirstRead"
    with gunicorn(tmp_path, downstream, backend, *options, master_calls=False, slow=2.0) as (url, log):
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: call(url), range(4)))
        text = log.read_text()
    (worker,) = {answer["pid"] for answer in answers}
    sent = sent_by(downstream)
    assert sent[0] == 2  # the opener's
    assert sent[worker] >= 1, (sent, answers, text)  # through the open circuit
    assert "did not answer this process's first read" in text, text  # its build's wait ran out

"""PriorityThreadWorker under the gunicorn releases users run, not only the one installed (27.0.1).

It overrides parts of gunicorn's gthread worker, which changed between releases (see
``tests/support/gunicorn_releases.py``). Each test runs a real gunicorn of a release and checks what
a user would: requests on new connections ordered by priority, a stop or a ``--max-requests``
recycle not held up by a connection that never writes, and a clear word in gunicorn's log where a
release cannot order new connections. ``None`` is the installed release.
"""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from benchmarks._shedding_load import BIN, ROOT, server
from tests.server.test_priority_worker import ask, check_the_order_of_new_connections
from tests.support.gunicorn_releases import folder
from tests.support.loopback import free_port, wait_until_listening

WORKER = "django_aio_request.server.priority_worker.PriorityThreadWorker"


def first_on_path(version: str | None) -> str | None:
    return None if version is None else str(folder(version))


@contextmanager
def gunicorn(
    version: str | None, *options: str, log: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A PriorityThreadWorker with one thread, serving ``benchmarks/_shedding_service.py``, of ``version``."""
    port = free_port()
    path = os.pathsep.join(p for p in [first_on_path(version), str(ROOT)] if p)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks._shedding_service", "PYTHONPATH": path}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    logging = ["--error-logfile", str(log)] if log is not None else ["--log-level", "warning"]
    command = [str(BIN / "gunicorn"), "-k", WORKER, "--threads", "1", "--graceful-timeout", "30", "--bind",
               f"127.0.0.1:{port}", *logging, *options, "benchmarks._shedding_service:wsgi()"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_until_listening(process, port, "gunicorn")
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def served(port: int) -> int:
    answers: list[Any] = []
    ask(f"http://127.0.0.1:{port}", "/sleep?ms=1", {}, answers)
    return int(answers[0][0])


def workers(arbiter: int) -> set[int]:
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    return {int(pid) for pid in children}


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # exited, not yet reaped
    except OSError:  # no such process
        return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["23.0.0", "26.2.0"])
def test_requests_on_new_connections_are_ordered_by_priority(version: str) -> None:
    # The load of test_priority_worker.py's test of the installed release, under this one.
    with server("gunicorn-priority", 1, {"shedding": None}, first_on_path=first_on_path(version)) as url:
        check_the_order_of_new_connections(url)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["23.0.0", "26.2.0", None])
def test_a_stop_is_not_held_by_a_new_connection_that_never_writes(version: str | None) -> None:
    # 26.2.0 sleeps on its poller during a stop until the graceful timeout unless woken: the worker
    # held the stop for all 30 s (gthread of that release: 6.9 s; 27.0.1: 4.9 s).
    with gunicorn(version) as (process, port):
        assert served(port) == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            time.sleep(0.3)  # accepted, nothing written
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(40)
            took = time.monotonic() - stopping
    assert took < 4.5, took


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["26.2.0", None])
def test_a_max_requests_recycle_is_not_held_by_a_new_connection_that_never_writes(version: str | None) -> None:
    # --max-requests stops a worker without a signal; with one worker, nothing is served until the
    # arbiter has started the next, so a worker that lingers is time the service does not answer.
    with gunicorn(version, "--max-requests", "3") as (process, port):
        assert served(port) == 200
        (old,) = workers(process.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            time.sleep(0.3)
            assert served(port) == 200
            assert served(port) == 200  # the third: the worker stops after it
            stopping = time.monotonic()
            while not gone(old) and time.monotonic() - stopping < 40:
                time.sleep(0.02)
            took = time.monotonic() - stopping
        assert served(port) == 200  # the next worker serves
    assert took < 4.5, took


@pytest.mark.timeout(120)
def test_a_release_that_queues_new_connections_at_once_says_so_in_gunicorns_log(tmp_path: Path) -> None:
    # 24.0-25.1 hand a new connection to a thread as soon as they accept it, before its bytes can be
    # read: the worker still orders kept-alive connections, and says what it cannot do.
    log = tmp_path / "gunicorn.log"
    with gunicorn("24.1.1", log=log) as (_, port):
        assert served(port) == 200
    text = log.read_text()
    assert "PriorityThreadWorker under gunicorn 24.1.1" in text
    assert "queued at the default priority" in text
    assert text.count("PriorityThreadWorker under gunicorn") == 1

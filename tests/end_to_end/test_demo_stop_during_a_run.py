"""The demo's frontend asked to stop (SIGTERM: the launcher's, on a Ctrl-C in ``make demo``) during a
run of the Hedging or Load shedding page: the run ends at once, the frontend exits by itself, the log
stays short.

The Hedging run's callers are a ``ThreadPoolExecutor``'s, whose threads the interpreter waits for at
exit: they went on calling billing after the SIGTERM, billing stopped meanwhile, a warning for each
refused call (some 500 "Connection refused" lines for a Ctrl-C during a run of 1000 calls), until the
launcher killed the frontend 5 s later, before its last publishing round of the breakers (a review).
The Load shedding run's callers are daemon threads (as the request's thread is): the interpreter does
not wait for them, and they call no more once it begins to exit; checked here all the same.
"""

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testproject import launcher
from testproject.hedging import MAX_IN_FLIGHT
from testproject.shedding import CALLERS
from tests.support.services import READY_TIMEOUT, _free_ports

KILL_AFTER = 3.0  # seconds the test's launcher waits before it kills a service (make demo's: 5)
PROMPTLY = 2.5  # seconds the stop may take (all three exit in turn; a call in flight may wait on a 500 ms tail)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _requests(service: launcher.ServiceProcess) -> int:
    """The requests ``service`` received so far; orders, overloaded, sheds the read: it is tried again."""
    request = urllib.request.Request(service.url + "demo/stats", headers={"X-Request-Priority": "high"})
    for _ in range(20):
        try:
            with _NO_PROXY.open(request, timeout=5) as response:
                return int(json.load(response)["requests"])
        except urllib.error.HTTPError as error:
            error.close()
            if error.code != 503:
                raise
            time.sleep(0.05)
    raise AssertionError(f"{service.name} shed 20 reads of its stats")


def _log_lines(service: launcher.ServiceProcess) -> list[str]:
    assert service.log is not None
    return service.log.read_text(errors="replace").splitlines()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[launcher.ServiceProcess]]:
    ports = dict(zip((name for name, _ in launcher.SERVICES), _free_ports(len(launcher.SERVICES)), strict=True))
    environment = {"DEMO_DATABASE": ":memory:", "DEMO_VERBOSE": "0"}
    with launcher.running(ports, environment=environment, log_dir=tmp_path, ready_timeout=READY_TIMEOUT) as running:
        yield running


def _in_the_background(url: str) -> threading.Thread:
    """GET ``url`` in a thread (the page never answers: its service stops during the run)."""

    def get() -> None:
        try:
            with _NO_PROXY.open(url, timeout=30) as response:
                response.read()
        except (OSError, urllib.error.URLError):
            pass

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    return thread


def _until(condition: Callable[[], bool], timeout: float) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "the run did not get under way"
        time.sleep(0.05)


# The page, the service its run calls, and how many calls of the run may be in flight at once.
RUNS = {
    "hedging": ("hedging/?start=1&calls=1000", "billing", MAX_IN_FLIGHT),  # 10 s at 100 calls a second
    "shedding": ("shedding/?start=1", "orders", sum(CALLERS.values()) + 1),  # 3 s; the callers and the sampler
}


@pytest.mark.parametrize("stopped", ["frontend", "all three"])
@pytest.mark.parametrize("run", list(RUNS))
def test_a_stop_during_a_run_ends_it_and_the_frontend_exits_by_itself(
    services: list[launcher.ServiceProcess], run: str, stopped: str
) -> None:
    """``frontend``: only the frontend is stopped, and the service its run calls goes on counting
    what reaches it: no call starts after the stop. ``all three``: as a Ctrl-C in ``make demo`` (the
    launcher stops frontend, orders and billing, in that order): the calls in flight fail, no more."""
    page, called_name, in_flight = RUNS[run]
    frontend = services[0]
    called = next(service for service in services if service.name == called_name)
    _in_the_background(frontend.url + page)
    _until(lambda: _requests(called) > 100, timeout=20)  # the run is under way (hedging: the warm-up is over)
    logged = len(_log_lines(frontend))
    first, first_at = _requests(called), time.monotonic()
    time.sleep(0.2)
    received = _requests(called)
    asked = time.monotonic()
    rate = (received - first) / (asked - first_at)  # calls a second the run made just before the stop
    if stopped == "frontend":
        frontend.terminate()
        frontend.wait(asked + KILL_AFTER)  # kills it then
    else:
        launcher.stop_all(services, timeout=KILL_AFTER)
    took = time.monotonic() - asked
    received_after = _requests(called) if stopped == "frontend" else None
    after = _log_lines(frontend)[logged:]
    print(f"{run}, {stopped}: exited after {took:.2f} s, {len(after)} lines logged, {received} -> {received_after}")
    assert frontend.returncode == 0, (frontend.returncode, f"{took:.1f} s")  # -9: killed by the launcher
    assert took < PROMPTLY, took
    # The calls in flight when the service they call stopped fail, a warning each: at most a line for
    # each, where every call started after the stop was one more.
    assert len(after) <= in_flight, "\n".join(after)
    assert not [line for line in after if "Traceback" in line], "\n".join(after)
    if received_after is not None:
        # The calls in flight at the stop, and those made between the count's read and the moment the
        # frontend's main thread, which needs its turn among the callers on a loaded machine, acts on
        # the signal: an overloaded orders counts one when it takes it in (3, 16 and, under CI's load,
        # 30 of 24 after the stop, seen), billing at once (0 or 1). Before, a Hedging run went on
        # calling: 300 more. And those the run made at its pace until the frontend's main thread had
        # its turn (54 more in 0.38 s, at about 150 a second, in a CI run on an AMD VM).
        assert received_after - received <= 2 * in_flight + rate * took, (received, received_after, rate, took)

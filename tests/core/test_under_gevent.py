"""The client in a process gevent monkey-patched first thing, as gunicorn's gevent worker does: each
case runs in a child process of its own against a loopback server in this (unpatched) one."""

import json
from typing import Any

import pytest

from tests.support.child_python import run_script
from tests.support.loopback import Handler, LoopbackServer, hang_until_disconnect

PATCHED = """
import sys
from gevent import monkey
monkey.patch_all()
import json, time
import gevent
import django_aio_request as dar
endpoint = sys.argv[1]
"""


def run_patched(script: str, server: LoopbackServer) -> Any:
    done = run_script(PATCHED + script, server.url + "/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_greenlets_calls_run_at_once_and_each_ends_at_its_deadline(server: LoopbackServer) -> None:
    """40 greenlets each call a server that never answers, with a 0.5 s deadline: every call ends 408
    at its deadline, all together (nothing waits on another greenlet's call), single and hedged."""
    server.route("/hang", hang_until_disconnect)
    script = """
hedged = dar.parallel_strategy(attempts_count=2, delays_provider=lambda k: 0.1 * k, stragglers_only=False)
out = {}
for name, strategy in (("single", dar.single_attempt_strategy()), ("hedged", hedged)):
    client = dar.setup(endpoint=endpoint, timeout=0.5, safe_method_strategy=strategy, retry_budget=None)
    def call():
        began = time.monotonic()
        with client.request(dar.get("hang")) as response:
            return response.status, time.monotonic() - began
    began = time.monotonic()
    results = [g.get() for g in [gevent.spawn(call) for _ in range(40)]]
    out[name] = {"statuses": sorted({s for s, _ in results}), "slowest": max(t for _, t in results),
                 "wall": time.monotonic() - began}
    client.close()
print(json.dumps(out))
"""
    result = run_patched(script, server)
    for name in ("single", "hedged"):
        got = result[name]
        assert got["statuses"] == [408], (name, got)
        assert 0.5 <= got["slowest"] < 0.7, (name, got)
        assert got["wall"] < 0.9, (name, got)


@pytest.mark.timeout(120)
def test_a_greenlet_that_computes_holds_the_deadlines_of_the_others(server: LoopbackServer) -> None:
    """What docs/usage.md says of gevent: the deadlines are kept by a timer thread, a greenlet there,
    which runs only when the greenlet holding the hub yields. A call given 0.2 s beside a greenlet
    computing 0.8 s without yielding ends once that one yields, not at its deadline."""
    server.route("/hang", hang_until_disconnect)
    script = """
client = dar.setup(endpoint=endpoint, timeout=0.2, safe_method_strategy=dar.single_attempt_strategy())
def call():
    began = time.monotonic()
    with client.request(dar.get("hang")) as response:
        return response.status, time.monotonic() - began
def compute():
    gevent.sleep(0.05)  # the call has sent its request and waits
    end = time.monotonic() + 0.8
    while time.monotonic() < end:
        pass
caller, computer = gevent.spawn(call), gevent.spawn(compute)
status, took = caller.get()
computer.join()
client.close()
print(json.dumps({"status": status, "took": took}))
"""
    result = run_patched(script, server)
    assert result["status"] == 408
    took = result["took"]
    assert took >= 0.8, took  # held past its 0.2 s by the computing greenlet


@pytest.mark.timeout(120)
def test_a_spawned_greenlet_carries_the_deadline_only_in_a_copy_of_the_context(server: LoopbackServer) -> None:
    """gevent.spawn() starts a greenlet in a context of its own, as a new thread does: a call made there
    sends the client's TIMEOUT and priority, not the request's; run in a copy of the request's context,
    it sends what is left of the request's deadline and its priority."""
    seen: list[tuple[str | None, str | None]] = []

    def echo(handler: Handler) -> None:
        seen.append((handler.headers.get("X-Request-Timeout"), handler.headers.get("X-Request-Priority")))
        handler.reply(200)

    server.route("/echo", echo)
    script = """
import contextvars
client = dar.setup(endpoint=endpoint, timeout=5.0, safe_method_strategy=dar.single_attempt_strategy())
def call():
    with client.request(dar.get("echo")) as response:
        return response.status
with dar.set_context(deadline=dar.Deadline.from_timeout(1.0), priority=dar.Priority.HIGH):
    plain = gevent.spawn(call).get()
    copied = gevent.spawn(contextvars.copy_context().run, call).get()
client.close()
print(json.dumps([plain, copied]))
"""
    assert run_patched(script, server) == [200, 200]
    (plain_timeout, plain_priority), (copied_timeout, copied_priority) = seen
    assert 4.5 < float(plain_timeout or 0) <= 5.0  # the client's TIMEOUT, less the time to send
    assert plain_priority == "normal"
    assert 0.5 < float(copied_timeout or 0) <= 1.0
    assert copied_priority == "high"


def test_under_eventlet_a_loser_s_connection_is_shut_down_not_released() -> None:
    """eventlet's monkey_patch() removes select.poll, which a released read waits in: losers' reads
    are not released there (CAN_RELEASE), and their connections are shut down as over TLS."""
    script = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "import eventlet; eventlet.monkey_patch()\n"
        "from django_aio_request.transport.releasable_socket import CAN_RELEASE; print(CAN_RELEASE)\n"
    )
    done = run_script(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

"""The attempt threads (core/attempt_threads.py) at interpreter exit: a hedge in flight must not keep
a process alive after its caller is gone."""

import subprocess
import sys
import textwrap
import time

from tests.support.loopback import LoopbackServer, wait_for_disconnect

CHILD = """
import threading, time
import django_aio_request as dar

client = dar.setup(
    endpoint={url!r},
    metrics=False,
    timeout=8.0,
    safe_method_strategy=dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.05)),
)

def call():
    with client.request(dar.get("hang")):
        pass

threading.Thread(target=call, daemon=True).start()
time.sleep(0.5)  # attempt 0 and its hedge are both waiting for an answer
"""


def test_a_hedge_in_flight_does_not_hold_the_process_at_exit(server: LoopbackServer) -> None:
    """Python joins thread pool workers at exit: the hedge held the process until the call's 8 s
    deadline. It is stopped (its socket shut down) when the interpreter exits."""
    closed: list[float | None] = []
    server.route("/hang", lambda h: closed.append(wait_for_disconnect(h, 15.0)))
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD.format(url=server.url))], check=True, timeout=30)
    elapsed = time.monotonic() - started
    assert len(server.received("/hang")) == 2  # attempt 0 and the hedge were both sent
    assert elapsed < 4.0, elapsed  # it took 8.4 s: the deadline


ASYNC_CHILD = """
import asyncio, threading, time
import django_aio_request as dar

client = dar.setup(endpoint={url!r}, metrics=False, timeout=10.0, safe_method_strategy=dar.single_attempt_strategy())

async def call():
    async with client.arequest(dar.get("hang")):
        pass

threading.Thread(target=lambda: asyncio.run(call()), daemon=True).start()
time.sleep(0.3)  # the call is waiting for its answer
"""


def test_an_async_call_in_flight_does_not_hold_the_process_at_exit(server: LoopbackServer) -> None:
    """An ``arequest()`` whose loop runs in a daemon thread: its call thread is a thread pool worker
    too, which the interpreter joined until the call's 10 s deadline. It is stopped at exit as a
    hedge is (its socket shut down)."""
    closed: list[float | None] = []
    server.route("/hang", lambda h: closed.append(wait_for_disconnect(h, 15.0)))
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", textwrap.dedent(ASYNC_CHILD.format(url=server.url))], check=True, timeout=30)
    elapsed = time.monotonic() - started
    assert len(server.received("/hang")) == 1  # the call was sent
    assert elapsed < 3.0, elapsed  # it took 10 s: the deadline

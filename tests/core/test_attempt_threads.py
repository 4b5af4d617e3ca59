"""The attempt threads (core/attempt_threads.py) at interpreter exit: a hedge in flight must not keep
a process alive after its caller is gone."""

import subprocess
import sys
import textwrap
import time

from tests.support.loopback import Handler, LoopbackServer, answer_after, wait_for_disconnect, widen_backlog

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


def run_child(script: str, server: LoopbackServer) -> "subprocess.CompletedProcess[str]":
    """``script`` (its ``{url}`` the server's) in a new interpreter, which must exit 0; its output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script.format(url=server.url))],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    )


NON_DAEMON_CHILD = """
import asyncio, concurrent.futures, os, threading, time
import django_aio_request as dar

def say(*words):
    # one write(2) a line: print() writes its words and the newline apart, and three threads
    # answering at once interleaved them ("async-call-in-a-thread async-call-in-an-executor-job ...")
    os.write(1, (" ".join(map(str, words)) + "\\n").encode())

client = dar.setup(
    endpoint={url!r}, metrics=False, timeout=5.0, retry_budget=None, safe_method_strategy=dar.single_attempt_strategy()
)
hedged = dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.05))

async def call(name):
    async with client.arequest(dar.get("slow")) as response:
        say(name, response.status, response.read().decode())

def hedged_call():
    with client.request(dar.get("first-hangs"), strategy=hedged) as response:
        say("hedged-sync-call", response.status, response.read().decode())

threading.Thread(target=lambda: asyncio.run(call("async-call-in-a-thread"))).start()
concurrent.futures.ThreadPoolExecutor(1).submit(lambda: asyncio.run(call("async-call-in-an-executor-job")))
threading.Thread(target=hedged_call).start()
time.sleep(0.3)  # the main thread returns while the three calls wait for their answers
"""


def test_calls_in_flight_in_non_daemon_threads_get_their_answers_after_the_main_thread_returns(
    server: LoopbackServer,
) -> None:
    """Python goes on running non-daemon threads (and the jobs of a ``ThreadPoolExecutor``) after the
    main thread returns, and their calls must get their answers. Exit stopped every async call and
    hedge in flight, whoever waited for them: the async calls answered 499 at once, and the hedged
    sync call lost the hedge that was to answer it (attempt 0 never answers)."""
    server.route("/slow", answer_after(1.0, body=b"late"))
    arrivals = [0]

    def first_hangs(handler: Handler) -> None:
        arrivals[0] += 1
        if arrivals[0] == 1:
            wait_for_disconnect(handler, 15.0)
        else:
            time.sleep(1.0)
            handler.reply(200, b"hedge")

    server.route("/first-hangs", first_hangs)
    child = run_child(NON_DAEMON_CHILD, server)
    answers = sorted(line for line in child.stdout.splitlines() if line)
    assert answers == [
        "async-call-in-a-thread 200 late",
        "async-call-in-an-executor-job 200 late",
        "hedged-sync-call 200 hedge",
    ], child.stdout + child.stderr


FRESH_CLIENTS_CHILD = """
import asyncio, collections, os, threading
import django_aio_request as dar

clients = [
    dar.setup(endpoint={url!r}, metrics=False, timeout=4.0, retry_budget=None, max_workers=32,
              safe_method_strategy=dar.single_attempt_strategy())
    for _ in range(8)
]
submitted = threading.Event()

async def call(client):
    async with client.arequest(dar.get("slow")) as response:
        return response.status

async def calls():
    tasks = [asyncio.create_task(call(clients[i % 8])) for i in range(64)]
    await asyncio.sleep(0)  # each task has run to its await: all 64 taken by their clients
    submitted.set()
    return await asyncio.gather(*tasks)

def run():
    os.write(1, repr(dict(collections.Counter(asyncio.run(calls())))).encode())

threading.Thread(target=run).start()
submitted.wait()  # the main thread returns while the call threads are still being started
"""


def test_async_calls_taken_before_exit_began_get_their_answers_from_fresh_clients(server: LoopbackServer) -> None:
    """A fresh client's call threads are started off the loop (core/call_threads.py), after the call
    was taken: exit may begin in between. A non-daemon thread's calls must still get their answers
    (docs/architecture.md); the starter refused once exit began, and 12-49 of 64 answered 408 at
    their deadline, having sent nothing (a review)."""
    widen_backlog(server)
    server.route("/slow", answer_after(1.0, body=b"late"))
    child = run_child(FRESH_CLIENTS_CHILD, server)
    assert child.stdout == "{200: 64}", child.stdout + child.stderr

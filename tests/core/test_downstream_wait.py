"""The time a request being served waits on client calls: what load shedding judges it without."""

import asyncio
import concurrent.futures
import contextvars
import time
from collections.abc import Callable

import pytest

from django_aio_request import Client, constant_delays, get, parallel_strategy
from django_aio_request.core.downstream_wait import (
    DownstreamWait,
    current_downstream_wait,
    measure_downstream_wait,
    stop_measuring,
)
from tests.support.loopback import LoopbackServer, answer_after, hang_until_disconnect


def test_nothing_is_measured_unless_the_server_side_asks() -> None:
    assert current_downstream_wait() is None
    wait, token = measure_downstream_wait()
    try:
        assert current_downstream_wait() is wait
    finally:
        stop_measuring(token)
    assert current_downstream_wait() is None


def test_overlapping_calls_count_once_and_an_open_one_counts_up_to_now() -> None:
    wait = DownstreamWait()
    wait.begin()
    time.sleep(0.05)
    wait.begin()  # a second call while the first is open
    time.sleep(0.05)
    wait.end()
    assert 0.1 <= wait.seconds < 0.2  # still open: counts up to now
    wait.end()
    closed = wait.seconds
    time.sleep(0.05)
    assert wait.seconds == closed  # nothing open: no longer grows
    assert 0.1 <= closed < 0.2
    with pytest.raises(RuntimeError, match="without a begin"):
        wait.end()


def test_the_cpu_time_calls_spent_is_work_done_here_not_waiting() -> None:
    wait = DownstreamWait()
    wait.begin()
    time.sleep(0.05)
    wait.end(cpu=0.02)  # the call's thread built the request and read the answer for 20 ms of it
    assert 0.05 <= wait.seconds < 0.1
    assert wait.off_cpu == pytest.approx(wait.seconds - 0.02)
    spun = DownstreamWait()
    spun.begin()
    spun.end(cpu=1.0)  # more CPU than wall time (threads of a fan-out): no negative wait
    assert spun.off_cpu == 0.0


def test_a_call_adds_the_time_it_waited_and_a_call_outside_adds_nothing(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    server.route("/slow", answer_after(0.15))
    client = make_client()
    wait, token = measure_downstream_wait()
    try:
        started = time.monotonic()
        with client.request(get("slow")) as response:
            assert response.status == 200
            time.sleep(0.1)  # the caller's own work with the response is not waiting downstream
        elapsed = time.monotonic() - started
    finally:
        stop_measuring(token)
    assert 0.15 <= wait.seconds <= elapsed - 0.1
    assert 0.14 <= wait.off_cpu <= wait.seconds  # the call's own CPU time is not waiting
    with client.request(get("slow")) as response:  # nothing measures: nothing to add to
        assert response.status == 200
    assert wait.seconds <= elapsed - 0.1


def test_a_hedged_call_and_calls_made_on_other_threads_count_the_time_any_was_open(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    server.route("/slow", answer_after(0.2))
    client = make_client()
    # Both calls are slow together: hedged all the same (stragglers_only would hedge only the younger).
    hedged = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.05), stragglers_only=False)
    wait, token = measure_downstream_wait()
    try:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # a view fanning out, the context copied

            def fetch() -> int:
                with client.request(get("slow"), strategy=hedged) as response:
                    return response.status

            futures = [pool.submit(contextvars.copy_context().run, fetch) for _ in range(2)]
            assert [future.result() for future in futures] == [200, 200]
        elapsed = time.monotonic() - started
    finally:
        stop_measuring(token)
    assert len(server.received("/slow")) == 4  # both calls hedged
    assert 0.2 <= wait.seconds <= elapsed  # overlapping calls and attempts counted once


def test_an_async_call_adds_the_time_it_waited(server: LoopbackServer, make_client: Callable[..., Client]) -> None:
    server.route("/slow", answer_after(0.15))
    client = make_client()

    async def main() -> float:
        wait, token = measure_downstream_wait()
        try:
            async with client.arequest(get("slow")) as response:
                assert response.status == 200
        finally:
            stop_measuring(token)
        return wait.seconds

    assert 0.15 <= asyncio.run(main()) < 0.5


def test_a_cancelled_async_call_stops_counting(server: LoopbackServer, make_client: Callable[..., Client]) -> None:
    server.route("/hang", hang_until_disconnect)
    client = make_client()

    async def main() -> DownstreamWait:
        wait, token = measure_downstream_wait()
        try:

            async def call() -> None:
                async with client.arequest(get("hang")):
                    pass

            started = time.monotonic()
            task = asyncio.create_task(call())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            ran.append(time.monotonic() - started)
        finally:
            stop_measuring(token)
        return wait

    ran: list[float] = []
    wait = asyncio.run(main())
    counted = wait.seconds
    time.sleep(0.05)
    assert wait.seconds == counted  # closed when the task was cancelled, not still counting
    # Most of the 0.1 s the call hung counted (the clock starts once the request is built and its
    # thread runs: a loaded machine takes some of it), and never more than the task ran.
    assert 0.05 <= counted <= ran[0]

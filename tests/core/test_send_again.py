"""core/send_again.py: a transport's own resend of an attempt asks the call's retry budget."""

import threading
import time

import django_aio_request as dar
from django_aio_request import Deadline, get
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.request import Request
from django_aio_request.core.response import EmptyResponse, Response
from django_aio_request.core.send_again import may_send_again
from django_aio_request.transport.base import Transport


class _AskingTransport(Transport):
    """Answers 500 and, as RequestsTransport does before it sends a request again, asks first."""

    def __init__(self, first_takes: float = 0.0) -> None:
        self.asked: list[tuple[bool, str]] = []
        self._lock = threading.Lock()
        self._first_takes = first_takes  # the first attempt asks after that long: a hedge goes meanwhile

    def send(
        self, endpoint: str, request: Request, timeout: float, cancellation: Cancellation | None = None
    ) -> Response:
        with self._lock:
            first, self._first_takes = self._first_takes, 0.0
        time.sleep(first)
        allowed = may_send_again()
        with self._lock:
            self.asked.append((allowed, threading.current_thread().name))
        return EmptyResponse(status=500)


def test_outside_a_call_the_transport_may_send_again() -> None:
    assert may_send_again() is True


def test_each_resend_is_paid_for_by_the_budget_and_refused_once_it_is_spent() -> None:
    transport = _AskingTransport()
    budget = dar.RetryBudget(ratio=0.0, min_per_second=0.2, window_seconds=10.0)  # 2 extra requests
    client = dar.setup(
        endpoint="http://billing.internal/",
        transport=transport,
        safe_method_strategy=dar.single_attempt_strategy(),
        retry_budget=budget,
        metrics=False,
    )
    try:
        exhausted = []
        for _ in range(3):
            with client.request(get("x"), deadline=Deadline.from_timeout(5)) as response:
                exhausted.append(response.budget_exhausted)
    finally:
        client.close()
    assert [allowed for allowed, _ in transport.asked] == [True, True, False]
    assert budget.refused == 1
    assert exhausted == [False, False, True]  # the call whose resend the budget refused says so


def test_a_hedge_on_a_worker_thread_asks_the_budget_too() -> None:
    transport = _AskingTransport(first_takes=0.3)
    budget = dar.RetryBudget(ratio=0.0, min_per_second=0.1, window_seconds=10.0)  # 1 extra request
    client = dar.setup(
        endpoint="http://billing.internal/",
        transport=transport,
        safe_method_strategy=dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.05)),
        retry_budget=budget,
        metrics=False,
    )
    try:
        with client.request(get("x"), deadline=Deadline.from_timeout(5)) as response:
            assert response.status == 500
    finally:
        client.close()
    # The hedge spent the one extra the budget had: it may not send again, nor may attempt 0 after it.
    assert [allowed for allowed, _ in transport.asked] == [False, False]
    assert len({name for _, name in transport.asked}) == 2  # the caller's thread and a worker

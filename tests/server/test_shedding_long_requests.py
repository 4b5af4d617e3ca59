"""Load shedding with a long request in flight, on real servers: under the learned limit it lends its
slot (server/shedding/limiter.py), so the requests beside it are served. A file of its own, so the
test runner can run it beside test_shedding_servers.py."""

import threading
import time

import pytest

from benchmarks._shedding_load import server
from tests.server.test_shedding_servers import answer


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("kind", "long", "short"),
    [
        ("gunicorn", "/sleep?ms=3000", "/cpu?ms=5"),
        ("uvicorn", "/asleep?ms=3000", "/acpu?ms=5"),
    ],
)
def test_a_long_request_does_not_hold_the_only_slot_from_everyone_else(kind: str, long: str, short: str) -> None:
    # A worker's second request is a 3 s report; its limit, probing at start, is 1. Every request
    # coming meanwhile (1 s deadlines, high priority too) waited QUEUE_TIMEOUT (0.5 s) and was refused,
    # for as long as the report ran (a review: 0 of 36 answered under gthread and the priority worker,
    # 4 of 40 under uvicorn; the same behind a request stuck on a lock, at a learned limit of 1). A
    # request running past four mean service times (and 0.1 s) now lends its slot to the next one.
    with server(kind, 4, {"shedding": True}) as url:
        answer(url, short, {}, [])  # the worker's first request loads Django (0.7 s here): not timed
        report: list[tuple[int, str | None, float]] = []
        holder = threading.Thread(target=answer, args=(url, long, {"X-Request-Timeout": "10"}, report))
        holder.start()
        time.sleep(0.3)
        others: list[tuple[int, str | None, float]] = []
        for n in range(8):
            priority = "high" if n % 2 else "normal"
            answer(url, short, {"X-Request-Timeout": "1", "X-Request-Priority": priority}, others)
            time.sleep(0.1)
        holder.join(30)
    assert [status for status, _, _ in report] == [200]
    assert [status for status, _, _ in others] == [200] * 8, others
    assert max(elapsed for _, _, elapsed in others) < 0.45, others  # none waited out QUEUE_TIMEOUT

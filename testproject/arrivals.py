"""What a demo service received: a process-local count and the latest arrivals, served at ``/demo/stats``.

The middleware comes first in ``MIDDLEWARE``, so a request that a later middleware answers at once
(the deadline middleware's 408) is recorded too. Arrival times are wall-clock (``time.time()``),
comparable between the processes of one machine.
"""

import collections
import dataclasses
import threading
import time
import urllib.parse
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from testproject import gc_pauses

STATS_PATH = "/demo/stats"


@dataclasses.dataclass(frozen=True)
class Arrival:
    at: float  # time.time() when the request reached Django
    path: str  # with its query string
    timeout: str | None  # X-Request-Timeout as received
    priority: str | None  # X-Request-Priority as received
    caller: str | None  # X-Service-Name as received


class Arrivals:
    def __init__(self, keep: int = 5000) -> None:
        self._lock = threading.Lock()
        self._latest: collections.deque[Arrival] = collections.deque(maxlen=keep)
        self._count = 0

    def record(self, arrival: Arrival) -> None:
        with self._lock:
            self._latest.append(arrival)
            self._count += 1

    def count(self) -> int:
        """Requests received since the process started."""
        with self._lock:
            return self._count

    def latest(self) -> list[Arrival]:
        with self._lock:
            return list(self._latest)

    def tagged(self, run: str) -> list[Arrival]:
        """The latest arrivals of requests with ``run=<run>`` in their query string."""
        return [
            a for a in self.latest() if urllib.parse.parse_qs(urllib.parse.urlsplit(a.path).query).get("run") == [run]
        ]


ARRIVALS = Arrivals()


def record_arrivals(
    get_response: Callable[[HttpRequest], HttpResponseBase],
) -> Callable[[HttpRequest], HttpResponseBase]:
    gc_pauses.install()  # served beside the arrivals, at /demo/stats

    def middleware(request: HttpRequest) -> HttpResponseBase:
        if request.path != STATS_PATH:
            headers = request.headers
            ARRIVALS.record(
                Arrival(
                    at=time.time(),
                    path=request.get_full_path(),
                    timeout=headers.get("X-Request-Timeout"),
                    priority=headers.get("X-Request-Priority"),
                    caller=headers.get("X-Service-Name"),
                )
            )
        return get_response(request)

    return middleware

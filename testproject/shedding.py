"""The load-shedding page's experiment: orders overloaded by callers of three priorities.

Orders sheds load (``SHEDDING`` in settings.demo_orders: at most 10 requests in flight, 3 of them kept
for high priority and 2 more for normal). The frontend runs :data:`CALLERS` callers for a few seconds,
each calling orders' ``downstream`` endpoint, which takes :data:`SERVICE_TIME`, again and again with
its own priority: 3 high, 10 normal and 10 low, more than twice what orders admits at once. A caller
whose request was shed waits :data:`BACKOFF` before the next one, as a client honouring the 503
would. What orders counted in ``aio_request_server_shed_total`` (read from its ``/metrics``) is
shown beside what the callers saw.
"""

import dataclasses
import threading
import time
import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from django_aio_request import Priority, clients, get
from testproject.stats import nearest_rank

CALLERS = {Priority.HIGH: 3, Priority.NORMAL: 10, Priority.LOW: 10}
SERVICE_TIME = 0.1  # seconds orders takes for each admitted request
BACKOFF = 0.05  # seconds a shed caller waits before calling again
_REQUEST = get("downstream/things/{id}", path_parameters={"id": "busy"}, query_parameters={"delay": str(SERVICE_TIME)})
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass(frozen=True)
class PriorityResult:
    priority: Priority
    callers: int
    latencies_ms: tuple[float, ...]  # of the calls orders answered 200, sorted
    shed: int  # calls orders answered 503
    other: int  # any other outcome (a deadline, a network error)
    counted_by_orders: int  # the rise of orders' aio_request_server_shed_total for this priority

    @property
    def calls(self) -> int:
        return len(self.latencies_ms) + self.shed + self.other

    @property
    def success_rate(self) -> float:
        return len(self.latencies_ms) / self.calls if self.calls else 0.0

    def percentile(self, share: float) -> float:
        """Nearest rank over the successful calls."""
        return nearest_rank(self.latencies_ms, share)

    @property
    def p50(self) -> float:
        return self.percentile(0.5)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)


def orders_shed() -> dict[str, float]:
    """Orders' ``aio_request_server_shed_total`` so far, by priority (all reasons together)."""
    metrics = urllib.parse.urljoin(clients["orders_single"].endpoint, "/metrics")  # django-prometheus's view
    with _NO_PROXY.open(metrics, timeout=5) as response:
        text = response.read().decode()
    counts = {p.value: 0.0 for p in Priority}
    for family in text_string_to_metric_families(text):
        if family.name == "aio_request_server_shed":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["priority"]] += sample.value
    return counts


def run(seconds: float) -> list[PriorityResult]:
    """Every caller for ``seconds``, all at once; the outcome by priority."""
    before = orders_shed()
    outcomes: dict[Priority, list[tuple[int, float]]] = {p: [] for p in CALLERS}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def caller(priority: Priority) -> None:
        client = clients["orders_single"]
        while time.monotonic() < stop_at:
            started = time.monotonic()
            with client.request(_REQUEST, priority=priority) as response:
                status = response.status
            with lock:
                outcomes[priority].append((status, (time.monotonic() - started) * 1000))
            if status == 503:
                time.sleep(BACKOFF)

    threads = [
        threading.Thread(target=caller, args=(priority,), name=f"shedding-{priority.value}-{n}")
        for priority, count in CALLERS.items()
        for n in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = orders_shed()
    return [
        PriorityResult(
            priority=priority,
            callers=CALLERS[priority],
            latencies_ms=tuple(sorted(ms for status, ms in outcomes[priority] if status == 200)),
            shed=sum(1 for status, _ in outcomes[priority] if status == 503),
            other=sum(1 for status, _ in outcomes[priority] if status not in (200, 503)),
            counted_by_orders=round(after[priority.value] - before[priority.value]),
        )
        for priority in CALLERS
    ]

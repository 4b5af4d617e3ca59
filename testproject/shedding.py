"""The load-shedding page's experiment: orders overloaded by callers of three priorities.

Orders sheds load (``"SHEDDING": True`` in settings.demo_orders: no limit set by hand; it learns how
many requests it serves at once from their latency). The frontend runs :data:`CALLERS` callers for a
few seconds, each calling orders' ``downstream`` endpoint, which spends :data:`SERVICE_CPU` of CPU
(Python code, holding the GIL: running more at once only makes each slower), again and again with
its own priority: 3 high, 10 normal and 10 low. A caller whose request was shed waits
:data:`BACKOFF` before the next one, as a client honouring the 503 would. What orders counted in
``aio_request_server_shed_total`` (read from its ``/metrics``) is shown beside what the callers saw,
and the limit orders learned, sampled every :data:`SAMPLE_EVERY` during the run.
"""

import dataclasses
import http.client
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from prometheus_client.parser import text_string_to_metric_families

from django_aio_request import Priority, clients, get
from testproject.stats import nearest_rank

CALLERS = {Priority.HIGH: 3, Priority.NORMAL: 10, Priority.LOW: 10}
SERVICE_CPU = 0.01  # seconds of CPU orders spends on each admitted request
BACKOFF = 0.05  # seconds a shed caller waits before calling again
SAMPLE_EVERY = 0.1  # seconds between readings of orders' learned limit
SCRAPE_TRIES = 20  # reads of orders' /metrics before the page gives up (each shed one waits BACKOFF)
_REQUEST = get("downstream/things/{id}", path_parameters={"id": "busy"}, query_parameters={"cpu": str(SERVICE_CPU)})
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass(frozen=True)
class PriorityResult:
    priority: Priority
    callers: int
    latencies_ms: tuple[float, ...]  # of the calls orders answered 200, sorted
    shed: int  # calls orders answered 503
    other: int  # any other outcome (a deadline, a network error)
    counted_by_orders: int  # the rise of orders' aio_request_server_shed_total for this priority
    scrapes_shed: int = 0  # of those, this page's own reads of orders' /metrics (high priority)

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


@dataclasses.dataclass(frozen=True)
class Sample:
    """Orders' load-shedding gauges at one moment of the run."""

    seconds: float  # since the run began
    limit: float  # aio_request_server_concurrency_limit
    waiting: float  # aio_request_server_queue_length, all priorities


class _Scrapes:
    """This page's own reads of orders' ``/metrics`` that orders shed (they count in its metric too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.shed = 0

    def count_one(self) -> None:
        with self._lock:
            self.shed += 1


_scrapes = _Scrapes()


def _orders_metrics() -> str:
    metrics = urllib.parse.urljoin(clients["orders_single"].endpoint, "/metrics")  # django-prometheus's view
    # Orders sheds /metrics like any request: the scrape claims high priority to be answered in time,
    # and is tried again after a shed (which orders counts as a high-priority one).
    request = urllib.request.Request(metrics, headers={"X-Request-Priority": "high"})
    for _ in range(SCRAPE_TRIES - 1):
        try:
            with _NO_PROXY.open(request, timeout=5) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as error:
            error.close()
            if error.code != 503:
                raise
            _scrapes.count_one()
            time.sleep(BACKOFF)
    with _NO_PROXY.open(request, timeout=5) as response:
        return str(response.read().decode())


def orders_shed() -> dict[str, float]:
    """Orders' ``aio_request_server_shed_total`` so far, by priority (all reasons together)."""
    counts = {p.value: 0.0 for p in Priority}
    for family in text_string_to_metric_families(_orders_metrics()):
        if family.name == "aio_request_server_shed":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["priority"]] += sample.value
    return counts


def orders_gauges(seconds: float) -> Sample:
    limit = waiting = 0.0
    for family in text_string_to_metric_families(_orders_metrics()):
        for sample in family.samples:
            if sample.name == "aio_request_server_concurrency_limit":
                limit = sample.value
            elif sample.name == "aio_request_server_queue_length":
                waiting += sample.value
    return Sample(round(seconds, 2), limit, waiting)


def timeline_svg(samples: list[Sample], width: int = 640, height: int = 160) -> SafeString:
    """The learned limit (line) and the requests waiting for a slot (bars) over the run, as inline SVG."""
    if not samples:
        return mark_safe("")
    end = max(s.seconds for s in samples) or 1.0
    top = max(*(s.limit for s in samples), *(s.waiting for s in samples), 1.0)
    left, bottom = 36, 20

    def x(seconds: float) -> float:
        return left + (width - left - 8) * seconds / end

    def y(value: float) -> float:
        return 8 + (height - bottom - 8) * (1 - value / top)

    bar = '<rect x="{}" y="{}" width="3" height="{}" fill="#f0ad4e"/>'
    bars = "".join(
        format_html(bar, f"{x(s.seconds):.1f}", f"{y(s.waiting):.1f}", f"{y(0) - y(s.waiting):.1f}") for s in samples
    )
    points = " ".join(f"{x(s.seconds):.1f},{y(s.limit):.1f}" for s in samples)
    return format_html(
        '<svg class="timeline" width="{}" height="{}" role="img" aria-label="learned limit over time">'
        '{}<polyline points="{}" fill="none" stroke="#4f81bd" stroke-width="2"/>'
        '<text x="2" y="{}" font-size="11">{}</text><text x="2" y="{}" font-size="11">0</text>'
        '<text x="{}" y="{}" font-size="11" text-anchor="end">{} s</text></svg>',
        width, height, mark_safe(bars), points, f"{y(top) + 4:.0f}", f"{top:g}",
        f"{y(0):.0f}", width - 8, height - 4, f"{end:g}",
    )  # fmt: skip


def run(seconds: float) -> tuple[list[PriorityResult], list[Sample], int]:
    """Every caller for ``seconds``, all at once; the outcome by priority, orders' limit over time and
    how many of its samples could not be read (orders did not answer the read in time, or reset it)."""
    before = orders_shed()
    scrapes_before = _scrapes.shed
    samples: list[Sample] = []
    began = time.monotonic()
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

    missed = 0

    def sampler() -> None:
        nonlocal missed
        while time.monotonic() < stop_at:
            try:
                samples.append(orders_gauges(time.monotonic() - began))
            except (OSError, http.client.HTTPException):  # urllib's errors are OSErrors
                # An overloaded orders may reset a read: that sample is missing (the page says how
                # many), not the rest of the run's (the thread died with the traceback).
                missed += 1
            time.sleep(SAMPLE_EVERY)

    threads.append(threading.Thread(target=sampler, name="shedding-sampler"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = orders_shed()
    scrapes = _scrapes.shed - scrapes_before  # a shed read is in orders' count before the read that answers
    results = [
        PriorityResult(
            priority=priority,
            callers=CALLERS[priority],
            latencies_ms=tuple(sorted(ms for status, ms in outcomes[priority] if status == 200)),
            shed=sum(1 for status, _ in outcomes[priority] if status == 503),
            other=sum(1 for status, _ in outcomes[priority] if status not in (200, 503)),
            counted_by_orders=round(after[priority.value] - before[priority.value]),
            scrapes_shed=scrapes if priority is Priority.HIGH else 0,
        )
        for priority in CALLERS
    ]
    return results, samples, missed

"""The load-shedding page's experiment: orders overloaded by callers of three priorities.

Orders sheds load (``"SHEDDING": True`` in settings.demo_orders: no limit set by hand; it learns how
many requests it serves at once from their latency). The frontend runs :data:`CALLERS` callers for a
few seconds, each calling orders' ``downstream`` endpoint, which spends :data:`SERVICE_CPU` of CPU
(Python code, holding the GIL: running more at once only makes each slower), again and again with
its own priority: 3 high, 10 normal and 10 low. A caller whose request was shed waits
:data:`BACKOFF` before the next one, as a client honouring the 503 would. What orders counted in
``aio_request_server_shed_total`` (read from its ``/metrics``) is shown beside what the callers saw,
and the limit orders learned, sampled every :data:`SAMPLE_EVERY` during the run.

A read of orders' ``/metrics`` that fails (orders does not answer it within :data:`SCRAPE_TIMEOUT`,
refuses the connection, answers anything but 200, or answers what is no metrics page) is shown as
missing, in words: before, one before or after the run made the page answer 500 (a review). The run
goes on where it can. A run stops as soon as the frontend begins to exit (:data:`STOPPING`).
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
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from django_aio_request import Priority, clients, get
from testproject.stats import nearest_rank

CALLERS = {Priority.HIGH: 3, Priority.NORMAL: 10, Priority.LOW: 10}
SERVICE_CPU = 0.01  # seconds of CPU orders spends on each admitted request
BACKOFF = 0.05  # seconds a shed caller waits before calling again
SAMPLE_EVERY = 0.1  # seconds between readings of orders' learned limit
SCRAPE_TRIES = 20  # reads of orders' /metrics before the page gives up (each shed one waits BACKOFF)
SCRAPE_TIMEOUT = 5.0  # seconds a read of orders' /metrics may take (it waits its turn on a busy orders)
_REQUEST = get("downstream/things/{id}", path_parameters={"id": "busy"}, query_parameters={"cpu": str(SERVICE_CPU)})
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: Set when the process begins to exit (the service was asked to stop): the callers call no more and
#: the run ends. They are daemon threads (as the request's thread that starts them is), which the
#: interpreter does not wait for, but which run on while it exits (the breakers' last publishing round,
#: the clients' closing), calling an orders that may be stopping too.
STOPPING = threading.Event()
_register_atexit = getattr(threading, "_register_atexit", None)  # called as the interpreter begins to exit
if _register_atexit is not None:
    _register_atexit(STOPPING.set)


class Unread:
    """A figure this page could not read from orders: shown as words where the number would be."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __str__(self) -> str:
        return f"unknown: {self.why}"

    def __repr__(self) -> str:
        return f"Unread({self.why!r})"


class MetricsUnreadable(Exception):
    """Orders' ``/metrics`` could not be read; the message says why, in words."""


@dataclasses.dataclass(frozen=True)
class PriorityResult:
    priority: Priority
    callers: int
    latencies_ms: tuple[float, ...]  # of the calls orders answered 200, sorted
    shed: int  # calls orders answered 503
    other: int  # any other outcome (a deadline, a network error)
    counted_by_orders: int | Unread  # the rise of orders' aio_request_server_shed_total for this priority
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
    """Orders' ``/metrics`` page, or :class:`MetricsUnreadable` saying why it could not be read."""
    metrics = urllib.parse.urljoin(clients["orders_single"].endpoint, "/metrics")  # django-prometheus's view
    # Orders sheds /metrics like any request: the scrape claims high priority to be answered in time,
    # and is tried again after a shed (which orders counts as a high-priority one).
    request = urllib.request.Request(metrics, headers={"X-Request-Priority": "high"})
    for attempt in range(1, SCRAPE_TRIES + 1):
        try:
            with _NO_PROXY.open(request, timeout=SCRAPE_TIMEOUT) as response:
                if response.status != 200:
                    raise MetricsUnreadable(f"orders answered its /metrics with {response.status}")
                return str(response.read().decode())
        except urllib.error.HTTPError as error:
            error.close()
            if error.code != 503:
                raise MetricsUnreadable(f"orders answered its /metrics with {error.code}") from error
            if attempt == SCRAPE_TRIES:
                raise MetricsUnreadable(f"orders shed all {SCRAPE_TRIES} reads of its /metrics (503)") from error
            _scrapes.count_one()
            time.sleep(BACKOFF)
        except (OSError, http.client.HTTPException, UnicodeDecodeError) as error:  # urllib's errors are OSErrors
            raise MetricsUnreadable(_why_unread(error)) from error
    raise AssertionError("unreachable")  # the last try returns or raises


def _why_unread(error: BaseException) -> str:
    reason = error.reason if isinstance(error, urllib.error.URLError) else error  # URLError wraps the socket's
    if isinstance(reason, TimeoutError):
        return f"orders did not answer its /metrics within {SCRAPE_TIMEOUT:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "orders refused the connection to its /metrics (is it running?)"
    if isinstance(reason, (ConnectionError, http.client.HTTPException)):
        return "orders closed the connection of the read of its /metrics without an answer"
    if isinstance(reason, UnicodeDecodeError):
        return "orders answered its /metrics with what is not a metrics page"
    return f"orders' /metrics could not be read ({reason})"


def _families(text: str) -> list[Metric]:
    try:
        return list(text_string_to_metric_families(text))
    except ValueError as error:  # prometheus_client's parser on what is no metrics page
        raise MetricsUnreadable("orders answered its /metrics with what is not a metrics page") from error


def orders_shed() -> dict[str, float]:
    """Orders' ``aio_request_server_shed_total`` so far, by priority (all reasons together)."""
    counts = {p.value: 0.0 for p in Priority}
    for family in _families(_orders_metrics()):
        if family.name == "aio_request_server_shed":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["priority"]] += sample.value
    return counts


def _shed_counts(when: str) -> dict[str, float] | Unread:
    """:func:`orders_shed`, or what could not be read and ``when``."""
    try:
        return orders_shed()
    except MetricsUnreadable as error:
        return Unread(f"{error} {when}")


def orders_gauges(seconds: float) -> Sample:
    limit = waiting = 0.0
    for family in _families(_orders_metrics()):
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
    how many of its samples could not be read (orders did not answer the read in time, or reset it).

    What orders counted is :class:`Unread` when its ``/metrics`` could not be read before or after
    the run: the callers' figures are the run's all the same."""
    before = _shed_counts("before the run")
    scrapes_before = _scrapes.shed
    samples: list[Sample] = []
    began = time.monotonic()
    outcomes: dict[Priority, list[tuple[int, float]]] = {p: [] for p in CALLERS}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def going_on() -> bool:
        return time.monotonic() < stop_at and not STOPPING.is_set()

    def caller(priority: Priority) -> None:
        client = clients["orders_single"]
        while going_on():
            started = time.monotonic()
            with client.request(_REQUEST, priority=priority) as response:
                status = response.status
            with lock:
                outcomes[priority].append((status, (time.monotonic() - started) * 1000))
            if status != 200:
                # A shed call waits, as a client honouring the 503 would; so does any other failure:
                # an orders that refused every connection was called back to back, a warning each.
                STOPPING.wait(BACKOFF)

    threads = [
        threading.Thread(target=caller, args=(priority,), name=f"shedding-{priority.value}-{n}")
        for priority, count in CALLERS.items()
        for n in range(count)
    ]

    missed = 0

    def sampler() -> None:
        nonlocal missed
        while going_on():
            try:
                samples.append(orders_gauges(time.monotonic() - began))
            except (MetricsUnreadable, OSError, http.client.HTTPException):
                # An overloaded orders may reset a read: that sample is missing (the page says how
                # many), not the rest of the run's (the thread died with the traceback).
                missed += 1
            STOPPING.wait(SAMPLE_EVERY)

    threads.append(threading.Thread(target=sampler, name="shedding-sampler"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after: dict[str, float] | Unread
    if isinstance(before, Unread):
        after = before  # nothing to subtract from: no read after the run
    elif STOPPING.is_set():
        after = Unread("the frontend stopped before the end of the run")
    else:
        after = _shed_counts("after the run")
    scrapes = _scrapes.shed - scrapes_before  # a shed read is in orders' count before the read that answers

    def counted(priority: Priority) -> int | Unread:
        if isinstance(after, Unread):
            return after
        assert not isinstance(before, Unread)
        return round(after[priority.value] - before[priority.value])

    results = [
        PriorityResult(
            priority=priority,
            callers=CALLERS[priority],
            latencies_ms=tuple(sorted(ms for status, ms in outcomes[priority] if status == 200)),
            shed=sum(1 for status, _ in outcomes[priority] if status == 503),
            other=sum(1 for status, _ in outcomes[priority] if status not in (200, 503)),
            counted_by_orders=counted(priority),
            # shown as "of them" beside orders' count: nothing beside a count it does not know
            scrapes_shed=scrapes if priority is Priority.HIGH and not isinstance(after, Unread) else 0,
        )
        for priority in CALLERS
    ]
    return results, samples, missed

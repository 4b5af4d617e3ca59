"""The hedging page's experiment: the same logical GETs to billing with a 5% slow tail, through a
single-attempt client and through a hedging one, bounded in calls and in time.

Billing is told by the query to answer 5% of its requests after 500 ms. Each variant first makes a
few unmeasured calls (they open connections and give the adaptive hedge delay its first samples),
then ``calls`` measured ones, started at a steady rate; the load is the requests billing counted
during the measured calls divided by the logical calls.

A run stops as soon as the frontend begins to exit (:data:`STOPPING`): no call starts after that,
and what is left of the run is skipped. Its callers are a ``ThreadPoolExecutor``'s, whose threads the
interpreter waits for at exit: a Ctrl-C in ``make demo`` during a run of 1000 calls went on calling
a billing that had stopped too (some 500 "Connection refused" warnings), until the launcher killed
the frontend 5 s later, before its last publishing round of the breakers (a review).
"""

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django_aio_request import Client, PercentileDelaysProvider, clients, get
from testproject.stats import nearest_rank

TAIL = {"slow": "0.05", "slow_delay": "0.5"}
VARIANTS = (
    ("single", "single attempt"),
    ("adaptive", "hedged: 2nd attempt after the p95"),
)
RATE = 100.0  # calls started per second, the same for both variants
MAX_IN_FLIGHT = 16  # caller threads: enough for the calls a 500 ms tail keeps waiting at that rate
WARMUP_CALLS = 30
COUNTER_SETTLE_SECONDS = 0.1  # a hedge sent just before its call ended may still be on its way to billing
_REQUEST = get("downstream/things/{id}", path_parameters={"id": "tail"}, query_parameters=TAIL)

#: Set when the process begins to exit (SIGTERM, Ctrl-C), before the interpreter waits for the
#: callers' threads: they start no more calls, and the run makes no more.
STOPPING = threading.Event()
# Python calls these last registered first, before it joins the threads of every ThreadPoolExecutor
# (concurrent.futures.thread registers that join when it is imported: above, before this).
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(STOPPING.set)


@dataclasses.dataclass(frozen=True)
class VariantResult:
    alias: str
    label: str
    latencies_ms: tuple[float, ...]  # sorted
    failures: int
    billing_requests: int
    hedge_delay_ms: float | None  # the adaptive delay after the run
    cut_short: bool  # the time budget ran out before all calls were made

    @property
    def calls(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, share: float) -> float:
        """Nearest rank: the latency that ``share`` of the calls did not exceed."""
        return nearest_rank(self.latencies_ms, share)

    @property
    def p50(self) -> float:
        return self.percentile(0.5)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    @property
    def max(self) -> float:
        return self.latencies_ms[-1] if self.latencies_ms else 0.0

    @property
    def load(self) -> float:
        return self.billing_requests / self.calls if self.calls else 0.0


def billing_requests() -> int:
    """Requests billing has served so far (its process-local counter)."""
    with clients["single"].request(get("stats")) as response:
        return int(response.json()["requests"]) if response.is_successful() else 0


def run(calls: int, budget_seconds: float) -> list[VariantResult]:
    """Every variant in turn, each with its share of the time budget (one left out by a stop: empty)."""
    return [run_variant(alias, label, calls, budget_seconds / len(VARIANTS)) for alias, label in VARIANTS]


def run_variant(alias: str, label: str, calls: int, budget_seconds: float) -> VariantResult:
    """Warm-up and measured calls through client ``alias``, no call started after ``budget_seconds``."""
    client = clients[alias]
    end = time.monotonic() + budget_seconds
    latencies: list[float] = []
    failures = billed = 0
    if not STOPPING.is_set():
        _calls(client, WARMUP_CALLS, end)
    if not STOPPING.is_set():
        before = billing_requests()
        latencies, failures, _ = _calls(client, calls, end)
        # no read of billing's counter once the process exits: it would be a call after the stop
        if not STOPPING.wait(COUNTER_SETTLE_SECONDS):
            billed = billing_requests() - before
    return VariantResult(
        alias=alias,
        label=label,
        latencies_ms=tuple(sorted(latencies)),
        failures=failures,
        billing_requests=billed,
        hedge_delay_ms=_hedge_delay_ms(client),
        cut_short=len(latencies) < calls,
    )


def _calls(client: Client, calls: int, end: float) -> tuple[list[float], int, bool]:
    """Make up to ``calls`` GETs at ``RATE`` calls per second, none started after ``end`` or once the
    process began to exit (:data:`STOPPING`).

    The calls start on a fixed schedule, not each when the previous one ended: with callers that
    wait for each other, a variant that cuts the tail would also send more requests per second, and
    its fast requests would be slower only because the machine is busier.
    """
    lock = threading.Lock()
    latencies: list[float] = []
    failures = 0
    scheduled = 0
    began = time.monotonic()

    def caller() -> None:
        nonlocal failures, scheduled
        while True:
            with lock:
                due = began + scheduled / RATE
                if scheduled >= calls or due >= end:
                    return
                scheduled += 1
            if STOPPING.wait(max(0.0, due - time.monotonic())):  # True: the process exits
                return
            started = time.monotonic()
            with client.request(_REQUEST) as response:
                ok = response.is_successful()
            elapsed_ms = (time.monotonic() - started) * 1000
            with lock:
                latencies.append(elapsed_ms)
                failures += not ok

    try:
        with ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="hedging-demo") as pool:
            for future in [pool.submit(caller) for _ in range(MAX_IN_FLIGHT)]:
                future.result()
    except RuntimeError:
        if not STOPPING.is_set():
            raise
        # "cannot schedule new futures after interpreter shutdown": the stop came as this began
    return latencies, failures, len(latencies) < calls


def _hedge_delay_ms(client: Client) -> float | None:
    safe = getattr(client.strategy, "safe", client.strategy)  # a method-based strategy's GET strategy
    delays = getattr(safe, "delays", None)
    return delays.delay(_REQUEST) * 1000 if isinstance(delays, PercentileDelaysProvider) else None

"""Priority-aware load shedding (``AIO_REQUEST["SHEDDING"]``), used by ``AioRequestMiddleware``.

* ``limit.py``: how many requests run at once, fixed or learned from latency;
* ``queue.py``: the requests waiting for a slot, best first;
* ``limiter.py``: admission: serve, wait, or refuse with 503;
* ``policy.py``: who may claim which priority.

The settings are plain data (``conf.schema.SheddingSettings``); :func:`shedding_for` builds the
process's one limiter from them on first use and builds a new one when they change (a changed
setting starts learning again). See docs/budgets-and-shedding.md.
"""

import dataclasses
import sys
import threading
import time

from django_aio_request.conf.schema import SheddingSettings
from django_aio_request.server.shedding.limit import AdaptiveLimit, FixedLimit, Limit
from django_aio_request.server.shedding.limiter import ADMITTED, REASONS, Admission, Limiter
from django_aio_request.server.shedding.policy import (
    AsyncPriorityPolicy,
    PriorityPolicy,
    build_async_policy,
    build_policy,
)

__all__ = [
    "ADMITTED",
    "REASONS",
    "AdaptiveLimit",
    "Admission",
    "FixedLimit",
    "Limiter",
    "Shedding",
    "build",
    "shedding_for",
]


@dataclasses.dataclass(frozen=True)
class Shedding:
    """What the middleware uses: the limiter and the priority policy (None: every claim honoured);
    ``apolicy``: the policy as the async path awaits it, for a callable (None: call ``policy``)."""

    settings: SheddingSettings
    known_services: frozenset[str] | None
    limiter: Limiter
    policy: PriorityPolicy | None
    apolicy: AsyncPriorityPolicy | None = None


def build(settings: SheddingSettings, known_services: frozenset[str] | None) -> Shedding:
    """A new limiter and policy for ``settings`` (``shedding_for`` keeps the process's one).

    It also sets the interpreter's switch interval (``SWITCH_INTERVAL``): a thread that wants the
    GIL waits up to that long for a thread running Python to let it go. With views that compute,
    the server's other threads, the ones that take requests in and refuse what cannot be served,
    wait that long for each turn (every read and write lets the GIL go and asks for it again), and
    a high-priority request waits in the server's own queue behind the requests they are slow to
    refuse (measured in docs/budgets-and-shedding.md).
    """
    if settings.switch_interval is not None:
        sys.setswitchinterval(settings.switch_interval)
    limit: Limit
    if settings.max_concurrency is not None:
        limit = FixedLimit(settings.max_concurrency)
    else:
        limit = AdaptiveLimit(
            minimum=settings.min_limit,
            maximum=settings.max_limit,
            tolerance=settings.latency_tolerance,
            probe_interval=settings.probe_interval,
            now=time.monotonic(),
        )
    limiter = Limiter(
        limit,
        queue_timeout=settings.queue_timeout,
        min_time_to_serve=settings.min_time_to_serve,
        retry_after=settings.retry_after,
    )
    policy = build_policy(settings.priority_policy, known_services, settings.untrusted_priority)
    return Shedding(settings, known_services, limiter, policy, build_async_policy(settings.priority_policy))


_current: Shedding | None = None
_lock = threading.Lock()


def shedding_for(settings: SheddingSettings, known_services: frozenset[str] | None) -> Shedding:
    """The process's limiter for these settings: built once, rebuilt when the settings change."""
    global _current
    found = _current
    if found is not None and found.settings is settings and found.known_services is known_services:
        return found  # the request path: two identity checks
    with _lock:
        found = _current
        if found is None or found.settings != settings or found.known_services != known_services:
            found = _current = build(settings, known_services)
        elif found.settings is not settings or found.known_services is not known_services:
            # Equal settings read again (settings reloaded unchanged): keep what was learned.
            found = _current = dataclasses.replace(found, settings=settings, known_services=known_services)
        return found

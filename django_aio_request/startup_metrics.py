"""The counters of every client ``AIO_REQUEST["CLIENTS"]`` names, exported at 0 as a service starts.

A client's setup exports its counters at 0 (a counter series born at 1 hides its first event from
``increase()`` and ``rate()``), but a named client is made at its first look-up, usually by the
request that makes its first call. A service started while a downstream was down opened the
circuit a few milliseconds after its zeros were written, before any scrape saw them: the first
scrape read the transition at 1, and ``increase()`` over it said the circuit had not opened (a
review, gunicorn with three workers and a real Prometheus). So ``AioRequestMiddleware`` exports the
zeros of every named client when it is made, as the server loads the application, before any
request: the attempts, retries, winning attempts and deadline refusals of each (metrics/client.py),
its retry budget's refusals when it has one, and its breaker's transitions when it has one
(metrics/breaker.py). Not the breaker state gauge, which counts the breakers that exist.
"""

import threading

from django_aio_request.conf.schema import AioRequestSettings
from django_aio_request.metrics.breaker import export_transitions_at_zero
from django_aio_request.metrics.client import export_at_zero
from django_aio_request.metrics.prometheus import ENABLED

_lock = threading.Lock()
_exported: AioRequestSettings | None = None  # the settings whose clients' zeros were exported last


def export_named_clients_at_zero(conf: AioRequestSettings) -> None:
    """Export the zero series of every client ``conf`` names (once per settings read: a middleware
    made again, by each test client for one, costs a comparison)."""
    global _exported
    if not ENABLED or _exported is conf:
        return
    with _lock:
        if _exported is conf:
            return
        for spec in conf.clients.values():
            export_at_zero(spec.endpoint, retry_budget=spec.options["RETRY_BUDGET"] is not False)
            if spec.circuit_breaker is not None:
                export_transitions_at_zero(spec.endpoint)
        _exported = conf

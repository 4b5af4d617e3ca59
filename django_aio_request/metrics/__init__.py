"""Prometheus metrics of the client (``client.py``), the circuit breakers (``breaker.py``) and the
server side (``server.py``), on prometheus-client's default registry when it is installed
(``prometheus.py``). No Django here: the client's pipeline records into these.

Calls and requests record off their own thread (``deferred.py``); :func:`flush` records what is
still queued (collection in this process does that by itself first).
"""

from django_aio_request.metrics import dead_workers as _dead_workers  # noqa: F401 (sweeps dead workers' live gauges)
from django_aio_request.metrics.deferred import flush_all as flush

__all__ = ["flush"]

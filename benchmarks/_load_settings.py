"""Settings of the caller service of ``benchmarks/load.py``: the demo's ``orders`` service (its
``/demo/hop`` calls billing's ``/demo/hop`` through the client ``billing``), with ``DEBUG`` off and
the client's GET strategy chosen by ``LOAD_STRATEGY``: ``single`` (one attempt) or ``hedged``
(a second attempt after the 95th percentile of recent latencies, the demo's ``adaptive`` client)."""

import os

from settings.demo import service_url
from settings.demo_orders import *  # noqa: F403

DEBUG = False
LOAD_STRATEGY = os.environ.get("LOAD_STRATEGY", "single")

_STRATEGIES: dict[str, dict[str, object]] = {
    "single": {"NAME": "single"},
    "hedged": {"NAME": "parallel", "ATTEMPTS_COUNT": 2, "DELAYS": {"NAME": "percentile"}},
}

AIO_REQUEST = {
    "SERVICE_NAME": "orders",
    "CLIENTS": {
        "billing": {
            "ENDPOINT": service_url("billing"),
            "TIMEOUT": 2.0,
            "SAFE_METHOD_STRATEGY": _STRATEGIES[LOAD_STRATEGY],
        },
    },
}

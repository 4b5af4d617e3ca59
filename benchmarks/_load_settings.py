"""Settings of the caller service of ``benchmarks/load.py``: the demo's ``orders`` service (its
``/demo/hop`` calls billing's ``/demo/hop`` through the client ``billing``), with ``DEBUG`` off and
the client's GET strategy chosen by ``LOAD_STRATEGY``: ``single`` (one attempt) or ``hedged``
(a second attempt after the ``LOAD_HEDGE_PERCENTILE`` percentile of recent latencies, not before
``LOAD_HEDGE_MIN_DELAY`` seconds).

The hedged client is set up the way a caller that must stay safe under load is: its hedges go at a
lower priority than the call (``HEDGE_PRIORITY``: billing, which sheds load, refuses them first),
the retry budget bounds them (on by default: 20% of first attempts plus 10 a second), and
``SATURATION_RATIO`` stops them while the learned delay says billing is saturated. ``/load/hedge-delay``
(benchmarks/_load_urls.py) tells the benchmark what each worker learned.
"""

import os

from settings.demo import service_url
from settings.demo_orders import *  # noqa: F403

DEBUG = False
ROOT_URLCONF = "benchmarks._load_urls"
LOAD_STRATEGY = os.environ.get("LOAD_STRATEGY", "single")
LOAD_HEDGE_PERCENTILE = float(os.environ.get("LOAD_HEDGE_PERCENTILE", "0.9"))
LOAD_HEDGE_MIN_DELAY = float(os.environ.get("LOAD_HEDGE_MIN_DELAY", "0.05"))
LOAD_SATURATION_RATIO = float(os.environ.get("LOAD_SATURATION_RATIO", "0"))  # 0: off
LOAD_STRAGGLERS_ONLY = os.environ.get("LOAD_STRAGGLERS_ONLY", "1") not in ("", "0")
# The demo's orders sheds load with a limit learned from latency; here off unless LOAD_CALLER_SHEDDING=1:
# the server whose shedding this benchmark is about is billing, and the caller's own refusals would
# stand in for the latency being measured.
LOAD_CALLER_SHEDDING = os.environ.get("LOAD_CALLER_SHEDDING", "0") not in ("", "0")

_STRATEGIES: dict[str, dict[str, object]] = {
    "single": {"NAME": "single"},
    "hedged": {
        "NAME": "parallel",
        "ATTEMPTS_COUNT": 2,
        "DELAYS": {
            "NAME": "percentile",
            "PERCENTILE": LOAD_HEDGE_PERCENTILE,
            "MIN_DELAY_SECONDS": LOAD_HEDGE_MIN_DELAY,
            "SATURATION_RATIO": LOAD_SATURATION_RATIO,
        },
        "STRAGGLERS_ONLY": LOAD_STRAGGLERS_ONLY,
    },
}

AIO_REQUEST = {
    "SERVICE_NAME": "orders",
    "SHEDDING": LOAD_CALLER_SHEDDING,
    "CLIENTS": {
        "billing": {
            "ENDPOINT": service_url("billing"),
            "TIMEOUT": 2.0,
            "SAFE_METHOD_STRATEGY": _STRATEGIES[LOAD_STRATEGY],
            "RETRY_BUDGET": True,  # the defaults, said out loud
            "HEDGE_PRIORITY": "lower",
        },
    },
}

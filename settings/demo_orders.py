"""The demo's middle service: its chain endpoint calls billing, retrying failures within the deadline."""

from settings.demo import *  # noqa: F403
from settings.demo import demo_logging, service_url

DEMO_SERVICE = "orders"
LOGGING = demo_logging(DEMO_SERVICE)
DEMO_NEXT_HOP = "billing"

AIO_REQUEST = {
    "SERVICE_NAME": "orders",
    # The load-shedding page overloads orders, which learns how many requests it serves at once from
    # their latency and serves high priority first. See docs/budgets-and-shedding.md.
    "SHEDDING": True,
    "CLIENTS": {
        "billing": {
            "ENDPOINT": service_url("billing"),
            "TIMEOUT": 5.0,
            "SAFE_METHOD_STRATEGY": {
                "NAME": "sequential",
                "ATTEMPTS_COUNT": 3,
                "DELAYS": {"NAME": "constant", "DELAY": 0.05},
            },
        },
    },
}

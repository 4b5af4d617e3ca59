"""The demo's middle service: its chain endpoint calls billing, retrying failures within the deadline."""

from settings.demo import *  # noqa: F403
from settings.demo import demo_logging, service_url

DEMO_SERVICE = "orders"
LOGGING = demo_logging(DEMO_SERVICE)
DEMO_NEXT_HOP = "billing"

AIO_REQUEST = {
    "SERVICE_NAME": "orders",
    # The load-shedding page overloads orders: at most 10 requests in flight, 3 of them kept for high
    # priority and 2 more for normal (low priority gets 5). See docs/budgets-and-shedding.md.
    "SHEDDING": {"MAX_CONCURRENCY": 10, "HIGH_PRIORITY_RESERVE": 0.3, "NORMAL_PRIORITY_RESERVE": 0.2},
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

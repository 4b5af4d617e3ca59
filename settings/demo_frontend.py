"""The demo's frontend: the pages, and the first hop of the chain frontend -> orders -> billing."""

from settings.demo import *  # noqa: F403
from settings.demo import demo_logging, service_url

DEMO_SERVICE = "frontend"
LOGGING = demo_logging(DEMO_SERVICE)
DEMO_NEXT_HOP = "orders"
DEMO_PAGES = True

_BILLING = service_url("billing")

AIO_REQUEST = {
    "SERVICE_NAME": "frontend",
    "CLIENTS": {
        # The chain page's next hop. A single attempt: orders retries billing, and retrying at two
        # levels would multiply the requests billing gets when it struggles.
        "orders": {"ENDPOINT": service_url("orders"), "TIMEOUT": 5.0, "SAFE_METHOD_STRATEGY": {"NAME": "single"}},
        # The load-shedding page: callers of each priority overloading orders, one attempt per call.
        "orders_single": {
            "ENDPOINT": service_url("orders"),
            "TIMEOUT": 2.0,
            "SAFE_METHOD_STRATEGY": {"NAME": "single"},
        },
        # The clients page: one logical GET to billing through each strategy.
        "single": {"ENDPOINT": _BILLING, "TIMEOUT": 2.0, "SAFE_METHOD_STRATEGY": {"NAME": "single"}},
        "sequential": {
            "ENDPOINT": _BILLING,
            "TIMEOUT": 2.0,
            "SAFE_METHOD_STRATEGY": {
                "NAME": "sequential",
                "ATTEMPTS_COUNT": 3,
                "DELAYS": {"NAME": "constant", "DELAY": 0.05},
            },
        },
        "hedged": {
            "ENDPOINT": _BILLING,
            "TIMEOUT": 2.0,
            "SAFE_METHOD_STRATEGY": {
                "NAME": "parallel",
                "ATTEMPTS_COUNT": 3,
                "DELAYS": {"NAME": "constant", "DELAY": 0.05},
            },
            "CIRCUIT_BREAKER": {
                "BREAK_DURATION": 5.0,
                "SAMPLING_DURATION": 10.0,
                "MINIMUM_THROUGHPUT": 5,
                "FAILURE_THRESHOLD": 0.5,
            },
        },
        # The hedging page: a second attempt after the 95th percentile of recent latencies.
        "adaptive": {
            "ENDPOINT": _BILLING,
            "TIMEOUT": 2.0,
            "SAFE_METHOD_STRATEGY": {"NAME": "parallel", "ATTEMPTS_COUNT": 2, "DELAYS": {"NAME": "percentile"}},
        },
    },
}

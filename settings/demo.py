"""The demo project: one Django service that calls its own simulated downstream through named clients."""

import os

from .base import *  # noqa: F403

DEBUG = True
DEMO_PORT = int(os.environ.get("DEMO_PORT", "8000"))
_SELF = f"http://127.0.0.1:{DEMO_PORT}/demo/downstream/"

AIO_REQUEST = {
    "SERVICE_NAME": "demo",
    "CLIENTS": {
        "single": {"ENDPOINT": _SELF, "TIMEOUT": 2.0, "SAFE_METHOD_STRATEGY": {"NAME": "single"}},
        "sequential": {
            "ENDPOINT": _SELF,
            "TIMEOUT": 2.0,
            "SAFE_METHOD_STRATEGY": {
                "NAME": "sequential",
                "ATTEMPTS_COUNT": 3,
                "DELAYS": {"NAME": "constant", "DELAY": 0.05},
            },
        },
        "hedged": {
            "ENDPOINT": _SELF,
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
    },
}

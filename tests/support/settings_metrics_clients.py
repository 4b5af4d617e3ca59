"""tests/support/settings_metrics.py with two named clients, for the test that a fresh service
exports their counters at 0 before any is looked up (tests/metrics/test_metrics.py)."""

from tests.support.settings_metrics import *  # noqa: F403

AIO_REQUEST = {
    "SERVICE_NAME": "tests",
    "CLIENTS": {
        # Port 9 (discard): never called; what is checked is exported before any call.
        "billing": {
            "ENDPOINT": "http://127.0.0.1:9/billing/",
            "CIRCUIT_BREAKER": {"FAILURE_THRESHOLD": 0.5},
            "RETRY_BUDGET": True,
        },
        "plain": {"ENDPOINT": "http://127.0.0.1:9/plain/", "RETRY_BUDGET": False},
    },
}

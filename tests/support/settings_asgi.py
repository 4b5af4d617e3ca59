"""Settings of the Django service tests/server/test_asgi.py runs under uvicorn. Its clients all call
the loopback server named by BILLING_URL: "billing" (TIMEOUT 5 s, single attempt), "capped"
(TIMEOUT 0.5 s) and "hedged" (two parallel attempts, the second after 0.1 s)."""

import os

from settings.test import *  # noqa: F403

ROOT_URLCONF = "tests.support.urls_app"
MIDDLEWARE = ["django_aio_request.middleware.AioRequestMiddleware"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
_BILLING = {"ENDPOINT": os.environ["BILLING_URL"], "SAFE_METHOD_STRATEGY": {"NAME": "single"}, "MAX_WORKERS": 16}
AIO_REQUEST = {
    "SERVICE_NAME": "asgi-tests",
    "CLIENTS": {
        "billing": {**_BILLING, "TIMEOUT": 5.0},
        "capped": {**_BILLING, "TIMEOUT": 0.5},
        "hedged": {
            **_BILLING,
            "SAFE_METHOD_STRATEGY": {
                "NAME": "parallel",
                "ATTEMPTS_COUNT": 2,
                "DELAYS": {"NAME": "constant", "DELAY": 0.1},
            },
            "RETRY_BUDGET": False,
        },
    },
}

"""settings.test serving tests/support/urls_db.py from gunicorn or uvicorn, on the test run's PostgreSQL
database (``AIO_REQUEST_TEST_DB_NAME``): sessions are stored there too, connections persist."""

import os
from typing import Any

from settings.test import *  # noqa: F403
from settings.test import DATABASES, MIDDLEWARE

_postgres: dict[str, Any] = {
    **DATABASES["postgres"],
    "NAME": os.environ["AIO_REQUEST_TEST_DB_NAME"],
    "CONN_MAX_AGE": 60,
}
DATABASES = {"default": _postgres, "postgres": _postgres}
ROOT_URLCONF = "tests.support.urls_db"
MIDDLEWARE = [*MIDDLEWARE, "tests.support.urls_db.InnerMiddleware"]
AIO_REQUEST = {"SERVICE_NAME": "db-server", "DATABASE_STATEMENT_TIMEOUT": True}  # type: ignore[dict-item]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "django_aio_request": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}

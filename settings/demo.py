"""The demo's common settings: three services of this project, one process each, on 127.0.0.1.

    browser -> frontend (DEMO_PORT, 8000) -> orders (DEMO_ORDERS_PORT, 8001) -> billing (DEMO_BILLING_PORT, 8002)

``settings.demo_frontend``, ``settings.demo_orders`` and ``settings.demo_billing`` are the services
(``python -m testproject.demo`` starts all three); this module is what they share, and what
``manage.py`` uses when no settings module is named.
"""

import logging
import os

from django.core.exceptions import ImproperlyConfigured

from settings.base import *  # noqa: F403
from settings.base import BASE_DIR, INSTALLED_APPS, MIDDLEWARE

DEBUG = True

# The environment variable holding each service's port, and the ports: every service knows them all.
PORT_VARIABLES = {"frontend": "DEMO_PORT", "orders": "DEMO_ORDERS_PORT", "billing": "DEMO_BILLING_PORT"}


def _port(variable: str, default: int) -> int:
    """The port in ``variable``, else ``default``: a TCP port number, or ImproperlyConfigured saying
    which variable is wrong (``DEMO_PORT=abc`` was a ValueError traceback; ``0``, a port the system
    picks that the launcher could not know, waited 60 s for a service to answer on it)."""
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():  # unset, or set empty (VAR= make demo): the default
        if default > 65535:
            raise ImproperlyConfigured(
                f"{variable} is DEMO_PORT + {default - _FIRST_PORT} by default, {default}: no TCP port. "
                f"Set DEMO_PORT to at most {65535 - len(PORT_VARIABLES) + 1}, or set {variable}."
            )
        return default
    digits = raw.strip()
    # ASCII digits only, and few: int() refuses "²" (isdigit() is True for it) and 4,301 digits.
    port = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 5 else 0
    if not 1 <= port <= 65535:
        shown = repr(raw) if len(raw) <= 40 else repr(raw[:40]) + "..."
        raise ImproperlyConfigured(f"{variable} must be a TCP port number from 1 to 65535, not {shown}.")
    return port


_FIRST_PORT = _port("DEMO_PORT", 8000)
DEMO_PORTS = {
    service: _port(variable, _FIRST_PORT + offset) for offset, (service, variable) in enumerate(PORT_VARIABLES.items())
}
_sharing = {
    port: [PORT_VARIABLES[service] for service, used in DEMO_PORTS.items() if used == port]
    for port in set(DEMO_PORTS.values())
}
for _port_shared, _variables in sorted(_sharing.items()):
    if len(_variables) > 1:
        # Each was free when checked, then the services raced for it and one, at random, was
        # blamed for a taken port.
        raise ImproperlyConfigured(
            f"{' and '.join(_variables)} are {'both' if len(_variables) == 2 else 'all'} {_port_shared}:"
            " each demo service needs a port of its own."
        )
DEMO_PORT = DEMO_PORTS["frontend"]

# Set by each service module: its name, and the client its chain endpoint calls (None: the end of the chain).
DEMO_SERVICE = "demo"
DEMO_NEXT_HOP: str | None = None


def service_url(service: str) -> str:
    """The base URL of a demo service's JSON endpoints (``hop``, ``stats``, ``downstream/...``)."""
    return f"http://127.0.0.1:{DEMO_PORTS[service]}/demo/"


# Only the frontend uses the database (the admin login); the tests point the services at ":memory:".
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE") or BASE_DIR / "db.sqlite3",
        # The breaker publisher's thread writes every second beside the admin's requests: a write
        # waits up to 20 s for the other's lock (SQLite's default, 5 s, can run out on a busy machine).
        "OPTIONS": {"timeout": 20},
    }
}

# Every request is recorded first, so even one that AioRequestMiddleware (in base.MIDDLEWARE: it puts
# the incoming deadline and priority into the context for the whole request) turns away is counted.
MIDDLEWARE = ["testproject.arrivals.record_arrivals", *MIDDLEWARE]

# Static files (the admin's CSS and scripts) served by WhiteNoise, as a Django deployment serves them,
# first: they are not the services' requests (not counted, no deadline). Served from the apps' static
# directories (no collectstatic step), DEBUG or not.
MIDDLEWARE = ["whitenoise.middleware.WhiteNoiseMiddleware", *MIDDLEWARE]
WHITENOISE_USE_FINDERS = True

# Prometheus metrics (ours and django-prometheus's) at /metrics: see docs/metrics.md.
INSTALLED_APPS = [*INSTALLED_APPS, "django_prometheus"]


def _unexpected(record: logging.LogRecord) -> bool:
    """Django's request logs, but only unhandled errors: the simulated 503s, the 408s and the
    connections hedging abandons are the demo working."""
    return getattr(record, "status_code", 500) == 500 and record.levelno >= logging.ERROR


def demo_logging(service: str) -> dict[str, object]:
    """Warnings and errors to stderr, each line naming the service. ``DEMO_VERBOSE=1``: every request too."""
    verbose = os.environ.get("DEMO_VERBOSE", "") not in ("", "0")
    django_logger = {
        "handlers": ["console"],
        "level": "INFO",
        "propagate": False,
        "filters": [] if verbose else ["unexpected"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"unexpected": {"()": "django.utils.log.CallbackFilter", "callback": _unexpected}},
        "formatters": {"service": {"format": f"[{service}] %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "service"}},
        "root": {"handlers": ["console"], "level": "WARNING"},
        "loggers": {
            # Django's own configuration gives "django" a console handler of its own (under DEBUG): its
            # warnings (a CSRF refusal, say) were printed twice, once without the service's name.
            "django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
            "django.server": django_logger,
            "django.request": django_logger,
        },
    }


LOGGING = demo_logging(DEMO_SERVICE)

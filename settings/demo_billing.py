"""The demo's last service: it calls nobody; ``delay``, ``fail``, ``slow`` and ``slow_delay`` in the
query (passed down the chain) make it slow or flaky, and ``/demo/stats`` counts what it served."""

from settings.demo import *  # noqa: F403
from settings.demo import demo_logging

DEMO_SERVICE = "billing"
LOGGING = demo_logging(DEMO_SERVICE)
DEMO_NEXT_HOP = None

AIO_REQUEST = {"SERVICE_NAME": "billing", "CLIENTS": {}}

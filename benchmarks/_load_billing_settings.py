"""Settings of ``benchmarks/load.py``'s billing: the demo's ``settings.demo_billing`` with ``DEBUG``
off and load shedding on, at a fixed limit of ``LOAD_BILLING_CONCURRENCY`` requests served at once
(default 32): past it, requests wait by priority and low priority (the hedges of a client with
``HEDGE_PRIORITY = "lower"``) is refused first. A fixed limit, not the learned one, so that billing's
400 ms tail (5% of its requests sleep) does not move it from run to run."""

import os

from settings.demo_billing import *  # noqa: F403

DEBUG = False

AIO_REQUEST = {
    "SERVICE_NAME": "billing",
    "CLIENTS": {},
    "SHEDDING": {"MAX_CONCURRENCY": int(os.environ.get("LOAD_BILLING_CONCURRENCY", "32"))},
}

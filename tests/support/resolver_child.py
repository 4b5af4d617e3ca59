"""Calls through RequestsTransport to names a real DNS server resolves slowly, or never.

Run by tests/test_resolver.py as ``python -m tests.support.resolver_child SCENARIO`` inside a mount
namespace whose /etc/resolv.conf names 127.0.0.1 (the DnsServer started here) with one try of
30 s, so an unanswered lookup blocks ``getaddrinfo()`` for 30 s. Prints one JSON object.
"""

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django_aio_request import get
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.transport.bounded_resolver import MAX_THREADS, MOST_THREADS
from django_aio_request.transport.requests_transport import RequestsTransport
from tests.support.dns_server import Answer, DnsServer, NoSuchName, Rule, Silent
from tests.support.loopback import LoopbackServer

HANGING = "hang.example.test"
SLOW = "slow.example.test"
MISSING = "missing.example.test"
MANY_HANGING = [f"hang{n}.example.test" for n in range(MAX_THREADS + 4)]


def timed_call(transport: RequestsTransport, host: str, port: int, timeout: float, **kwargs: Any) -> dict[str, Any]:
    started = time.monotonic()
    response = transport.send(f"http://{host}:{port}/", get("who"), timeout, **kwargs)
    return {"status": response.status, "elapsed": time.monotonic() - started, "body": response.text()}


def resolver_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "django-aio-request-resolver")


def main(scenario: str) -> dict[str, Any]:
    rules: dict[str, Rule] = {HANGING: Silent(), SLOW: Answer("127.0.0.1", delay=0.2), MISSING: NoSuchName()}
    rules.update({name: Silent() for name in MANY_HANGING})
    dns = DnsServer(rules)
    http = LoopbackServer()
    http.route("/who", lambda handler: handler.reply(200, (handler.headers["Host"] or "").encode()))
    port = http.port
    transport = RequestsTransport()
    if scenario == "hanging":
        return {**timed_call(transport, HANGING, port, 0.5), "queries": dns.count(HANGING)}
    if scenario == "slow":
        return {**timed_call(transport, SLOW, port, 2.0), "queries": dns.count(SLOW)}
    if scenario == "missing":
        return timed_call(transport, MISSING, port, 2.0)
    if scenario == "cancelled":
        cancellation = Cancellation()
        threading.Timer(0.1, cancellation.cancel).start()
        return timed_call(transport, HANGING, port, 5.0, cancellation=cancellation)
    if scenario == "crowd":
        with ThreadPoolExecutor(20) as pool:
            same = list(pool.map(lambda _: timed_call(transport, HANGING, port, 0.5), range(20)))
        threads_for_one_name = resolver_threads()
        with ThreadPoolExecutor(len(MANY_HANGING)) as pool:
            distinct = list(pool.map(lambda name: timed_call(transport, name, port, 0.5), MANY_HANGING))
        return {
            "same": same,
            "queries": dns.count(HANGING),
            "threads_for_one_name": threads_for_one_name,
            "distinct": distinct,
            "threads": resolver_threads(),
            "max_threads": MAX_THREADS,
            "most_threads": MOST_THREADS,
        }
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))

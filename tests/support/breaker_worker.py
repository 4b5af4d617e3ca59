"""A separate OS process with one client from ``AIO_REQUEST`` (tests/test_breaker_shared.py drives it).

    python -m tests.support.breaker_worker '<AIO_REQUEST as JSON>' <client name>

Reads commands on stdin, answers each with one JSON line on stdout:
``call N`` (N GET calls: their statuses, and the state after), ``wait_state STATE SECONDS`` (the
state once it is STATE, or when the time is up), ``wait_failures N SECONDS`` (the failures this
process counts for the endpoint, its own and those read from the cache, once they are N or more,
or when the time is up), ``quit``.
"""

import json
import os
import sys
import time


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.test")
    import django

    django.setup()
    from django_aio_request import DefaultCircuitBreaker, get
    from django_aio_request.conf.building import build_client
    from django_aio_request.conf.schema import read_settings

    config, problems = read_settings(json.loads(sys.argv[1]))
    assert config is not None, [str(p) for p in problems]
    name = sys.argv[2]
    client = build_client(config.clients[name], "worker")
    breaker = client.circuit_breaker
    assert isinstance(breaker, DefaultCircuitBreaker)

    def state() -> str:
        return str(breaker.state.get(client.endpoint, "closed"))

    def answer(data: object) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    answer({"ready": True})
    for line in sys.stdin:
        command, *args = line.split()
        if command == "call":
            statuses = []
            for _ in range(int(args[0])):
                with client.request(get("fail")) as response:
                    statuses.append(response.status)
            answer({"statuses": statuses, "state": state()})
        elif command == "wait_state":
            end = time.monotonic() + float(args[1])
            while state() != args[0] and time.monotonic() < end:
                time.sleep(0.01)
            answer({"state": state()})
        elif command == "wait_failures":
            end = time.monotonic() + float(args[1])
            while breaker.store.totals(client.endpoint)[0] < int(args[0]) and time.monotonic() < end:
                time.sleep(0.01)
            answer({"failures": breaker.store.totals(client.endpoint)[0], "state": state()})
        elif command == "quit":
            break
    client.close()


if __name__ == "__main__":
    main()

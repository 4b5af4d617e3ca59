"""Priority-aware load shedding under overload: a real server at twice its capacity.

The server is a separate process: Django with ``AioRequestMiddleware`` behind a threaded WSGI server
(wsgiref, one thread per connection, so it never refuses a connection itself) on 127.0.0.1. Its
one view does 20 ms of work on a resource with ``--capacity`` slots (default 4: a worker's CPU
cores or database connections), so the server completes at most capacity / 20 ms requests a second
(200/s by default); requests beyond that wait for a slot, as they would for a busy CPU or pool.

The driver (this process) sends requests open-loop, at evenly spaced times, at ``--overload`` times
that rate (default 2x: 400/s) for ``--seconds`` (default 5), in the repeating priority pattern
high, normal, low, normal, low (20% high, 40% normal, 40% low). Each carries
``X-Request-Timeout: --deadline`` (default 0.5 s) and its ``X-Request-Priority``. A request
*succeeds* when it is answered 200 within its deadline; p50/p99 are over the requests answered
200 (nearest rank), "shed" is the share answered 503 by shedding.

Two runs, each against a fresh server process:

* without shedding: ``AIO_REQUEST`` without ``SHEDDING``;
* with shedding: ``SHEDDING = {"MAX_CONCURRENCY": 3 x capacity, "HIGH_PRIORITY_RESERVE": 0.5,
  "NORMAL_PRIORITY_RESERVE": 0.25, "MIN_TIME_TO_SERVE": 0.05}``: normal and low together never hold
  more than 1.5 x capacity in flight, low alone at most 0.75 x capacity, and high has the rest.

The target: with shedding, high priority succeeds >= 99% within its deadline while low priority
absorbs the shedding; without, every priority suffers alike (the queue grows without bound, so
every priority's latency passes the deadline).

    .venv/bin/python -m benchmarks.shedding [--seconds 5] [--capacity 4] [--overload 2] [--deadline 0.5]
"""

import argparse
import concurrent.futures
import dataclasses
import http.client
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Any

from benchmarks._stats import percentile

WORK_SECONDS = 0.02
PATTERN = ("high", "normal", "low", "normal", "low")  # 20% high, 40% normal, 40% low
PRIORITIES = ("high", "normal", "low")


# The server process.

_resource: threading.BoundedSemaphore | None = None


def work(request: Any) -> Any:
    from django.http import HttpResponse

    assert _resource is not None
    with _resource:  # wait for a slot of the worker's capacity, then 20 ms of work
        time.sleep(WORK_SECONDS)
    return HttpResponse(b"done")


urlpatterns: list[Any] = []


def serve(capacity: int, shedding: dict[str, Any] | None) -> None:
    """Configure Django, serve on an ephemeral port, print ``PORT <n>``; stops when stdin closes."""
    global _resource
    import django
    from django.conf import settings

    _resource = threading.BoundedSemaphore(capacity)
    aio_request: dict[str, Any] = {"SERVICE_NAME": "bench", "MAX_TIMEOUT": 60.0}
    if shedding is not None:
        aio_request["SHEDDING"] = shedding
    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-not-a-secret",
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django_aio_request"],
        MIDDLEWARE=["django_aio_request.middleware.AioRequestMiddleware"],
        DATABASES={},
        AIO_REQUEST=aio_request,
        LOGGING_CONFIG=None,
    )
    django.setup()
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from django.core.wsgi import get_wsgi_application
    from django.urls import path

    urlpatterns.append(path("work", work))

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = 4096

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, get_wsgi_application(), server_class=Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"PORT {server.server_port}", flush=True)
    sys.stdin.read()  # until the driver closes it
    os._exit(0)  # do not wait for the requests still queued on the resource


# The driver.


@dataclasses.dataclass
class Outcome:
    priority: str
    status: int  # 0: no answer (connection error or socket timeout)
    elapsed: float


def one(port: int, priority: str, deadline: float) -> Outcome:
    started = time.perf_counter()
    status = 0
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline + 1.0)
        try:
            connection.request(
                "GET", "/work", headers={"X-Request-Timeout": str(deadline), "X-Request-Priority": priority}
            )
            response = connection.getresponse()
            response.read()
            status = response.status
        finally:
            connection.close()
    except OSError:
        pass
    return Outcome(priority, status, time.perf_counter() - started)


def drive(port: int, rate: float, seconds: float, deadline: float) -> list[Outcome]:
    """Send ``rate`` requests a second at evenly spaced times (open loop) for ``seconds``."""
    count = int(rate * seconds)
    futures: list[concurrent.futures.Future[Outcome]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(512, int(rate * (deadline + 1.0)) + 16)) as pool:
        start = time.perf_counter() + 0.05
        for index in range(count):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, port, PATTERN[index % len(PATTERN)], deadline))
        return [future.result() for future in futures]


def start_server(capacity: int, shedding: dict[str, Any] | None) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.shedding",
            "--serve",
            json.dumps({"capacity": capacity, "shedding": shedding}),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return process, int(line.split()[1])


def stop_server(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(
    name: str, capacity: int, shedding: dict[str, Any] | None, *, rate: float, seconds: float, deadline: float
) -> dict[str, dict[str, float]]:
    process, port = start_server(capacity, shedding)
    try:
        for priority in PRIORITIES:  # warm up: Django's first request, the URL resolver
            one(port, priority, 5.0)
        outcomes = drive(port, rate, seconds, deadline)
    finally:
        stop_server(process)
    print(f"\n{name}: {len(outcomes)} requests in {seconds:.0f} s at {rate:.0f}/s")
    columns = ("requests", "success", "shed 503", "late/other", "p50 ms", "p99 ms")
    print(f"  {'priority':<8} " + " ".join(f"{c:>10}" for c in columns))
    figures: dict[str, dict[str, float]] = {}
    for priority in PRIORITIES:
        mine = [o for o in outcomes if o.priority == priority]
        ok = [o for o in mine if o.status == 200 and o.elapsed <= deadline]
        served = [o.elapsed for o in mine if o.status == 200]
        shed = sum(o.status == 503 for o in mine)
        success = len(ok) / len(mine)
        p50 = percentile(sorted(served), 50) * 1000 if served else float("nan")
        p99 = percentile(sorted(served), 99) * 1000 if served else float("nan")
        other = (len(mine) - len(ok) - shed) / len(mine)  # late 200s, other statuses, no answer
        cells = (
            f"{len(mine)}",
            f"{success:.1%}",
            f"{shed / len(mine):.1%}",
            f"{other:.1%}",
            f"{p50:.1f}",
            f"{p99:.1f}",
        )
        print(f"  {priority:<8} " + " ".join(f"{c:>10}" for c in cells))
        figures[priority] = {"success": success, "shed": shed / len(mine), "p50": p50, "p99": p99}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--overload", type=float, default=2.0)
    parser.add_argument("--deadline", type=float, default=0.5)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        spec = json.loads(args.serve)
        serve(spec["capacity"], spec["shedding"])
        return
    rate = args.overload * args.capacity / WORK_SECONDS
    shedding = {
        "MAX_CONCURRENCY": 3 * args.capacity,
        "HIGH_PRIORITY_RESERVE": 0.5,
        "NORMAL_PRIORITY_RESERVE": 0.25,
        "MIN_TIME_TO_SERVE": 0.05,
    }
    print(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"capacity {args.capacity} x {WORK_SECONDS * 1000:.0f} ms = {args.capacity / WORK_SECONDS:.0f}/s, "
        f"offered {rate:.0f}/s ({args.overload:g}x), deadline {args.deadline} s, mix 20/40/40 high/normal/low"
    )
    print(f"SHEDDING = {shedding}")
    timing = {"rate": rate, "seconds": args.seconds, "deadline": args.deadline}
    without = run("without shedding", args.capacity, None, **timing)
    with_ = run("with shedding", args.capacity, shedding, **timing)
    high = with_["high"]
    verdict = "MET" if high["success"] >= 0.99 and high["p99"] <= args.deadline * 1000 else "MISSED"
    print(f"\ntarget: with shedding, high succeeds >= 99% within its deadline -> {high['success']:.1%}, {verdict}")
    spread = max(v["success"] for v in without.values()) - min(v["success"] for v in without.values())
    print(f"without shedding, success spread across priorities: {spread:.1%} (all suffer alike when small)")


if __name__ == "__main__":
    main()

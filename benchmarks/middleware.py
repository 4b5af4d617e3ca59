"""What AioRequestMiddleware costs per request, through Django's test client.

What is measured: the wall time of ``django.test.Client().get("/ping", headers=...)`` answered by
a trivial view (``HttpResponse(b"pong")``), through two handlers built in the same process from the
same settings except MIDDLEWARE:

* without: the base stack alone;
* with:    the base stack plus ``AioRequestMiddleware`` (right after SecurityMiddleware when the
  stack has it, else first).

``--stack django`` (the default) uses Django's default stack (security, sessions, common, CSRF,
auth, messages: ``startproject``'s stack without its X-Frame-Options middleware). ``--stack none`` has
an empty base stack, so its ratio is the harshest one can measure: the test client and the handler
are all the rest. Every
request carries ``X-Request-Timeout: 5`` (``--timeout 4.987``: another value, such as the
three-decimal form this package's client sends) and ``X-Request-Priority: high`` (``--no-headers``:
none, the default-deadline path), so both variants parse the same bytes.

The middleware remembers the timeout values it accepted (server/middleware.py, ``_ACCEPTED``), so a
value sent again costs a look-up. ``--new-values`` measures the other case, the worst one: every
request carries a timeout never sent before (``str()`` of a float, as aio-request sends it).

The two are interleaved in one run (one request without, one with, the order flipping every pair)
after a warm-up, so CPU frequency changes, other processes and GC hit both alike. ``with/without``
is the ratio of the same percentile of the two series; the target (issue 16) is a p50 of at most 1.03x. "Overhead
per request" is the median over pairs of (with - without), the most noise-proof figure.

The middleware hands each request's latency to a background thread, which records it in
``aio_request_server_latency`` (see django_aio_request/metrics/deferred.py). That work is not
in the request's time, so it is measured on its own and printed too: the CPU time per request the
recording thread spends, from queueing and recording as many observations as there were requests.

    .venv/bin/python -m benchmarks.middleware [--pairs 20000] [--warmup 2000] [--stack django|none]
        [--timeout 5] [--no-headers] [--new-values]
"""

import argparse
import gc
import itertools
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import django
from django.conf import settings

from benchmarks.overhead import interleaved, paired_median_difference, summary

TARGET_P50_RATIO = 1.03
OURS = "django_aio_request.middleware.AioRequestMiddleware"
DJANGO_STACK = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]


def ping(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse(b"pong")


urlpatterns: list[Any] = []


def configure(stack: str) -> None:
    apps = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions", "django.contrib.messages"]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-not-a-secret",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=(apps if stack == "django" else []) + ["django_aio_request"],
        MIDDLEWARE=[],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        AIO_REQUEST={},
    )
    django.setup()
    from django.urls import path

    urlpatterns.append(path("ping", ping))


def stacks(stack: str) -> tuple[list[str], list[str]]:
    base = DJANGO_STACK if stack == "django" else []
    at = 1 if base and base[0].endswith("SecurityMiddleware") else 0
    return base, [*base[:at], OURS, *base[at:]]


def make_call(middleware: list[str], headers: Sequence[dict[str, str]]) -> Any:
    """A call of /ping through a handler with ``middleware``; each sends the next of ``headers``, round."""
    from django.test import Client, override_settings

    client = Client()
    with override_settings(MIDDLEWARE=middleware):
        client.get("/ping", headers=headers[-1])  # the handler loads MIDDLEWARE on its first request
    sent = itertools.cycle(headers)

    def call() -> object:
        response = client.get("/ping", headers=next(sent))
        if response.status_code != 200:
            raise RuntimeError(f"got {response.status_code}")
        return response

    return call


def header_values(args: argparse.Namespace) -> list[dict[str, str]]:
    """The headers the requests carry, in turn: one set, or with ``--new-values`` one per request."""
    if args.no_headers:
        return [{}]
    if not args.new_values:
        return [{"X-Request-Timeout": args.timeout, "X-Request-Priority": "high"}]
    # Each differs from every other (10 µs apart) and is in the form aio-request sends, str(float).
    # The last is the handlers' first request (make_call); the timed ones never go round to it.
    start = float(args.timeout)
    count = 2 * args.warmup + args.pairs + 2
    return [{"X-Request-Timeout": str(start - n * 1e-5), "X-Request-Priority": "high"} for n in range(count)]


def recording_cost(count: int) -> float:
    """µs of CPU per observation to queue and record ``count`` like those of the /ping requests."""
    from django_aio_request import metrics as all_metrics
    from django_aio_request.metrics import server as server_metrics

    observation = (None, "GET", "ping", 200, None, 0.000125)
    all_metrics.flush()
    started = time.process_time()
    for _ in range(count):
        server_metrics.server_observations.add(observation)
    all_metrics.flush()
    return (time.process_time() - started) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--stack", choices=("django", "none"), default="django")
    parser.add_argument("--timeout", default="5", help="the X-Request-Timeout value sent (default: 5)")
    parser.add_argument("--no-headers", action="store_true")
    parser.add_argument(
        "--new-values",
        action="store_true",
        help="a timeout never sent before on every request (as aio-request sends a float's repr), not the same one",
    )
    args = parser.parse_args(argv)

    configure(args.stack)
    headers = header_values(args)
    base, ours = stacks(args.stack)
    without, with_ = make_call(base, headers), make_call(ours, headers)

    print(f"Python {platform.python_version()}, Django {django.get_version()}, {platform.machine()}")
    shown = headers[0] if len(headers) == 1 else f"{headers[0]} and then a new timeout each request"
    print(f"stack: {args.stack} ({len(base)} middleware), headers: {shown or 'none'}")
    interleaved([without, with_], args.warmup, args.max_seconds)
    gc.collect()
    started = time.monotonic()
    (a, b), rounds = interleaved([without, with_], args.pairs, args.max_seconds)
    elapsed = time.monotonic() - started
    print(f"{rounds} interleaved pairs after {args.warmup} warm-up pairs, {elapsed:.1f} s")
    if rounds < args.pairs:
        print(f"  (stopped early: --max-seconds {args.max_seconds} reached before {args.pairs} pairs)")
    s, t = summary(a), summary(b)
    keys = ("p50", "p90", "p99", "mean")
    print()
    print(f"  {'µs per request':<30}" + "".join(f"{k:>9}" for k in keys))
    print(f"  {'without AioRequestMiddleware':<30}" + "".join(f"{s[k]:>9.1f}" for k in keys))
    print(f"  {'with AioRequestMiddleware':<30}" + "".join(f"{t[k]:>9.1f}" for k in keys))
    print(f"  {'ratio with/without':<30}" + "".join(f"{t[k] / s[k]:>8.3f}x" for k in keys))
    print()
    print(f"  overhead per request (median of with - without over pairs): {paired_median_difference(a, b):.1f} µs")
    print(f"  recording thread, off the request path: {recording_cost(rounds):.1f} µs per request")
    ratio = t["p50"] / s["p50"]
    verdict = "MET" if ratio <= TARGET_P50_RATIO else "MISSED"
    print(f"  target: p50 at most {TARGET_P50_RATIO:.2f}x -> {ratio:.3f}x, {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What bounding PostgreSQL queries by the deadline costs per query, before (issue 17) and after.

Three connections to the same PostgreSQL database, in one process, each with its own bound:

* none:   no execute wrapper of ours (``DATABASE_STATEMENT_TIMEOUT`` off);
* after:  this version's ``QueryBound`` (a cancel timer per connection and deadline);
* before: the ``statement_timeout`` wrapper this replaced (``StatementTimeout``), loaded from git
  (``--before-rev``, default the last commit that had it); left out when git cannot show it.

A "request" sets a deadline in the context and runs ``--queries`` queries (``SELECT %s::int``,
fetched) on one connection; the three run one request each in turn, the order rotating, after a
warm-up, so noise hits all alike. Printed per query: p50 and p90 over requests (request time /
queries), the ratio of each p50 to none's, and the median over rounds of the difference to none.
Two deadline patterns: ``fixed`` (every request 20 s, the middleware's default) and ``varied``
(each request its own, 0.5-5 s, as callers' ``X-Request-Timeout`` differ), where the old wrapper
had to send a SET more often. And a few cancellations: how long after its deadline a
``pg_sleep(2)`` under a 0.2 s deadline ended (negative: before).

    .venv/bin/python -m benchmarks.database [--requests 3000] [--queries 1 5 20] [--before-rev REV]
"""

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import types
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import django
from django.conf import settings

from benchmarks._stats import percentile

ROOT = Path(__file__).resolve().parent.parent
BEFORE_REV = "a5584b4"  # the last commit with the statement_timeout wrapper
BEFORE_PATH = "django_aio_request/server/database.py"
LEGS = ("none", "after", "before")


def configure() -> None:
    url = urllib.parse.urlsplit(
        os.environ.get("AIO_REQUEST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": urllib.parse.unquote(url.path.lstrip("/")) or "postgres",
        "USER": urllib.parse.unquote(url.username or ""),
        "PASSWORD": urllib.parse.unquote(url.password or ""),
        "HOST": url.hostname or "",
        "PORT": str(url.port or ""),
    }
    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-not-a-secret",
        INSTALLED_APPS=["django_aio_request"],
        DATABASES={"default": database, **{leg: dict(database) for leg in LEGS}},
        AIO_REQUEST={"DATABASE_STATEMENT_TIMEOUT": True},
    )
    django.setup()


def load_before(rev: str) -> types.ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:{BEFORE_PATH}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"before: left out (git cannot show {rev}:{BEFORE_PATH}: {error})")
        return None
    module = types.ModuleType("_database_before")
    sys.modules[module.__name__] = module
    exec(compile(source, f"{rev}:{BEFORE_PATH}", "exec"), module.__dict__)  # our own history
    return module


def connection_for(leg: str, before: types.ModuleType | None) -> Any:
    from django.db import connections

    from django_aio_request.server import database

    connection = connections[leg]
    connection.ensure_connection()  # install() (AppConfig.ready) put a QueryBound on it
    ours = [w for w in connection.execute_wrappers if isinstance(w, database.QueryBound)]
    assert len(ours) == 1, connection.execute_wrappers
    if leg != "after":
        connection.execute_wrappers.remove(ours[0])
    if leg == "before":
        assert before is not None
        wrapper = before.StatementTimeout(leg)
        connection.execute_wrappers.append(wrapper)
        wrapper.reset(connection, known=True)
    return connection


def request_call(connection: Any, queries: int, deadlines: Callable[[], float]) -> Callable[[], None]:
    from django_aio_request import Deadline, set_context

    def call() -> None:
        with set_context(deadline=Deadline.from_timeout(deadlines())), connection.cursor() as cursor:
            for i in range(queries):
                cursor.execute("SELECT %s::int", [i])
                cursor.fetchone()

    return call


def interleaved(calls: Sequence[Callable[[], None]], rounds: int) -> list[list[float]]:
    times: list[list[float]] = [[] for _ in calls]
    for done in range(rounds):
        for k in range(len(calls)):
            index = (k + done) % len(calls)
            started = time.perf_counter_ns()
            calls[index]()
            times[index].append((time.perf_counter_ns() - started) / 1000)
    return times


def measure(legs: dict[str, Any], queries: int, pattern: str, requests: int) -> list[tuple[str, float, float, float]]:
    rng = random.Random(17)

    def varied() -> float:
        return rng.uniform(0.5, 5.0)

    deadlines = (lambda: 20.0) if pattern == "fixed" else varied
    calls = [request_call(connection, queries, deadlines) for connection in legs.values()]
    interleaved(calls, max(50, requests // 10))  # warm-up
    times = interleaved(calls, requests)
    per_query = [[t / queries for t in series] for series in times]
    none_p50 = percentile(sorted(per_query[0]), 50)
    rows = []
    for name, series in zip(legs, per_query, strict=True):
        ordered = sorted(series)
        difference = statistics.median(b - a for a, b in zip(per_query[0], series, strict=True))
        rows.append((name, percentile(ordered, 50), percentile(ordered, 90), difference))
    print(f"\n{pattern} deadlines, {queries} queries per request, {requests} interleaved rounds")
    print(f"{'':8} {'p50 µs/query':>13} {'p90':>9} {'p50 / none':>11} {'median of (leg - none)':>24}")
    for name, p50, p90, difference in rows:
        print(f"{name:8} {p50:13.1f} {p90:9.1f} {p50 / none_p50:10.3f}x {difference:21.1f} µs")
    return rows


def cancellations(legs: dict[str, Any], count: int) -> None:
    from django.db import DatabaseError

    from django_aio_request import Deadline, set_context

    print(f"\nA pg_sleep(2) under a 0.2 s deadline, {count} times each: when it ended, relative to the deadline")
    ends: dict[str, list[float]] = {name: [] for name in legs if name != "none"}
    for _ in range(count):
        for name, series in ends.items():
            deadline = Deadline.from_timeout(0.2)
            try:
                with set_context(deadline=deadline), legs[name].cursor() as cursor:
                    cursor.execute("SELECT pg_sleep(2)")
            except DatabaseError:
                pass
            series.append((time.monotonic() - deadline.expires_at) * 1000)
    for name, series in ends.items():
        ordered = sorted(series)
        median = statistics.median(ordered)
        print(f"{name:8} median {median:+6.1f} ms, earliest {ordered[0]:+6.1f}, latest {ordered[-1]:+6.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--cancellations", type=int, default=10)
    parser.add_argument("--before-rev", default=BEFORE_REV)
    args = parser.parse_args(argv)

    configure()
    before = load_before(args.before_rev)
    legs = {leg: connection_for(leg, before) for leg in LEGS if leg != "before" or before is not None}
    print(f"Python {platform.python_version()}, Django {django.get_version()}, {os.cpu_count()} CPUs")
    worst: dict[str, tuple[float, float, str]] = {}  # leg -> the highest p50 ratio to none, its µs, where
    for pattern in ("fixed", "varied"):
        for queries in args.queries:
            rows = measure(legs, queries, pattern, args.requests)
            for name, p50, _, difference in rows[1:]:
                ratio = p50 / rows[0][1]
                if ratio > worst.get(name, (0.0, 0.0, ""))[0]:
                    worst[name] = (ratio, difference, f"{pattern} deadlines, {queries} queries per request")
    print("\nWorst case (p50 per query against none):")
    for name, (ratio, difference, where) in worst.items():
        print(f"{name:8} {ratio:.3f}x, {difference:+.1f} µs per query ({where})")
    cancellations(legs, args.cancellations)
    return 0


if __name__ == "__main__":
    sys.exit(main())

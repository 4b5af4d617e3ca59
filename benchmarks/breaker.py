"""What the circuit breaker costs per call, in this process only and with its state shared in Redis.

Two parts, each interleaving its variants round by round in one run (these machines are noisy),
reporting the median over rounds of the time per call and ratios against the baseline:

1. Decisions: a tight loop of ``breaker.execute(...)`` around a trivial operation, against calling
   the operation and judging its result with no breaker (the baseline): a closed breaker (local,
   Redis) and an open one rejecting every call (local, Redis). For Redis it also counts the
   commands the Redis server processed per call during the loop (from ``INFO``): the hot path does
   not wait for Redis; the store's thread syncs every 0.1 s.
2. Real calls: ``client.request(get("ping"))`` to a keep-alive server in a child process, with no
   breaker (the baseline), a closed local breaker and a closed Redis one; and the time of a call
   rejected by an open breaker (local, Redis), which never touches the network.

The Redis store uses Django's ``RedisCache`` (``--redis-url``, default redis://127.0.0.1:6379/0);
without a reachable Redis only the local variants run.

    .venv/bin/python -m benchmarks.breaker [--rounds 15] [--loop 20000] [--calls 300] [--redis-url URL]
"""

import argparse
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import django_aio_request as dar
from benchmarks._server import serve_in_subprocess

SCOPE = "http://bench/"
OK = dar.EmptyResponse(status=200)
REJECTED = dar.EmptyResponse(status=502)


def configure_django(redis_url: str) -> bool:
    """Django settings with a RedisCache alias "breakers"; whether Redis answers."""
    from django.conf import settings

    settings.configure(
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "breakers": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": redis_url,
                "OPTIONS": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
            },
        }
    )
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    except Exception as error:
        print(f"Redis at {redis_url} not reachable ({error}): local variants only\n")
        return False
    return True


def make_breaker(shared: bool) -> dar.DefaultCircuitBreaker[str, dar.Response]:
    store = None
    if shared:
        from django.core.cache import caches

        from django_aio_request.breaker.cache_store import CacheCircuitStore

        store = CacheCircuitStore(
            "breakers",
            connect=lambda: caches.create_connection("breakers"),
            namespace=f"bench-{uuid.uuid4().hex[:8]}",
        )
    return dar.DefaultCircuitBreaker(
        break_duration=600, sampling_duration=10, minimum_throughput=10, failure_threshold=0.5, store=store
    )


def opened(breaker: dar.DefaultCircuitBreaker[str, dar.Response], scope: str) -> None:
    breaker.state  # noqa: B018
    breaker.execute(scope=scope, operation=lambda: OK, fallback=lambda: REJECTED, is_successful=lambda r: True)
    breaker.store.block(scope, breaker.store.now() + 600)
    sync = getattr(breaker.store, "sync", None)
    if sync is not None:
        sync()


def redis_commands(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).info("stats")["total_commands_processed"])


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run each variant once per round, in a rotating order; the median seconds per call of each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(variants[name]())
    return {name: statistics.median(values) for name, values in times.items()}


def decision_loop(breaker: dar.DefaultCircuitBreaker[str, dar.Response] | None, n: int) -> Callable[[], float]:
    def operation() -> dar.Response:
        return OK

    def is_successful(response: dar.Response) -> bool:
        return response.status < 500

    def bare() -> float:
        started = time.perf_counter()
        for _ in range(n):
            is_successful(operation())
        return (time.perf_counter() - started) / n

    if breaker is None:
        return bare

    execute = breaker.execute

    def through() -> float:
        started = time.perf_counter()
        for _ in range(n):
            execute(scope=SCOPE, operation=operation, fallback=lambda: REJECTED, is_successful=is_successful)
        return (time.perf_counter() - started) / n

    return through


def call_loop(client: dar.Client, n: int) -> Callable[[], float]:
    request = dar.get("ping")

    def run() -> float:
        started = time.perf_counter()
        for _ in range(n):
            with client.request(request) as response:
                response.read()
        return (time.perf_counter() - started) / n

    return run


def show(title: str, results: dict[str, float], baseline: str, unit: float, unit_name: str) -> None:
    print(title)
    print(f"| variant | {unit_name} per call | / {baseline} |")
    print("| --- | --- | --- |")
    for name, seconds in results.items():
        print(f"| {name} | {seconds / unit:.2f} | {seconds / results[baseline]:.2f}x |")
    print()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds of each variant, interleaved")
    parser.add_argument("--loop", type=int, default=20_000, help="decisions per variant and round")
    parser.add_argument("--calls", type=int, default=300, help="real calls per variant and round")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(__doc__.split("\n\n", 1)[0])
    print(f"Python {platform.python_version()}, {platform.machine()}, rounds {args.rounds}\n")
    redis_ok = configure_django(args.redis_url)
    kinds = ["local", "Redis"] if redis_ok else ["local"]
    breakers: dict[str, Any] = {}
    try:
        # 1. Decisions.
        variants: dict[str, Callable[[], float]] = {"no breaker": decision_loop(None, args.loop)}
        for kind in kinds:
            closed, open_ = make_breaker(kind == "Redis"), make_breaker(kind == "Redis")
            breakers[f"closed {kind}"], breakers[f"open {kind}"] = closed, open_
            opened(open_, SCOPE)
            closed.execute(scope=SCOPE, operation=lambda: OK, fallback=lambda: REJECTED, is_successful=lambda r: True)
            variants[f"closed breaker, {kind}"] = decision_loop(closed, args.loop)
            variants[f"open breaker (rejects), {kind}"] = decision_loop(open_, args.loop)
        before = redis_commands(args.redis_url) if redis_ok else 0
        started = time.monotonic()
        results = interleave(variants, args.rounds)
        elapsed = time.monotonic() - started
        show("1. breaker.execute around a trivial operation", results, "no breaker", 1e-9, "ns")
        if redis_ok:
            decisions = args.rounds * args.loop * 2
            commands = redis_commands(args.redis_url) - before
            print(
                f"Redis commands processed during part 1: {commands} for {decisions} decisions through Redis "
                f"breakers ({commands / decisions:.5f} per decision, over {elapsed:.1f} s, "
                "the syncs of the stores' threads included)\n"
            )

        # 2. Real calls through a client.
        with serve_in_subprocess() as url:
            clients = {"no breaker": dar.setup(endpoint=url, safe_method_strategy=dar.single_attempt_strategy())}
            for kind in kinds:
                for state in ("closed", "open"):
                    breaker = make_breaker(kind == "Redis")
                    breakers[f"client {state} {kind}"] = breaker
                    client = dar.setup(
                        endpoint=url, safe_method_strategy=dar.single_attempt_strategy(), circuit_breaker=breaker
                    )
                    if state == "open":
                        opened(breaker, client.endpoint)
                    clients[f"{state} breaker, {kind}" + (" (rejected)" if state == "open" else "")] = client
            calls = {name: call_loop(client, args.calls) for name, client in clients.items()}
            for run in calls.values():  # warm-up: connections, caches
                run()
            results = interleave(calls, args.rounds)
            show("2. client.request(get('ping')) on a loopback keep-alive server", results, "no breaker", 1e-6, "µs")
            for client in clients.values():
                client.close()
    finally:
        for breaker in breakers.values():
            breaker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What resolving host names on a resolver thread (bounded by the deadline) costs a new connection.

Each call goes to ``http://localhost:PORT/`` (a name, resolved from /etc/hosts) on a new
connection (the transport's pools are closed after every call), through ``RequestsTransport``:

* direct:   ``getaddrinfo()`` in the calling thread, as urllib3 does (what the transport did before);
* resolver: the lookup on django_aio_request's resolver thread, waited for until the deadline.

The two are interleaved in one run (the order flipping every pair) after a warm-up. A call on a
pooled keep-alive connection resolves nothing, so this is the cost per new connection, not per call.

    .venv/bin/python -m benchmarks.resolver [--pairs 2000] [--warmup 200]
"""

import argparse
import platform
import sys
from collections.abc import Callable

import django_aio_request as dar
from benchmarks._server import BenchServer
from benchmarks.overhead import interleaved, paired_median_difference, summary
from django_aio_request.transport import attempt_sockets as guard
from django_aio_request.transport.requests_transport import RequestsTransport


def new_connection_call(transport: RequestsTransport, url: str, through_resolver: bool) -> Callable[[], object]:
    is_name = guard._is_name

    def call() -> object:
        guard._is_name = is_name if through_resolver else (lambda host: False)
        try:
            response = transport.send(url, dar.get("ping"), 5.0)
        finally:
            guard._is_name = is_name
            transport.close()  # the next call opens a new connection
        if response.status != 200:
            raise RuntimeError(f"got {response.status}")
        return response

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)

    with BenchServer() as server:
        url = server.url.replace("127.0.0.1", "localhost")
        direct = new_connection_call(RequestsTransport(), url, through_resolver=False)
        resolved = new_connection_call(RequestsTransport(), url, through_resolver=True)
        print(f"Python {platform.python_version()}, {platform.machine()}; {url}, a new connection per call")
        interleaved([direct, resolved], args.warmup, args.max_seconds)
        (a, b), rounds = interleaved([direct, resolved], args.pairs, args.max_seconds)
    s, t = summary(a), summary(b)
    keys = ("p50", "p90", "p99", "mean")
    print(f"{rounds} interleaved pairs after {args.warmup} warm-up pairs")
    print()
    print(f"  {'µs per call':<28}" + "".join(f"{k:>9}" for k in keys))
    print(f"  {'getaddrinfo in the caller':<28}" + "".join(f"{s[k]:>9.1f}" for k in keys))
    print(f"  {'on the resolver thread':<28}" + "".join(f"{t[k]:>9.1f}" for k in keys))
    print(f"  {'ratio resolver/direct':<28}" + "".join(f"{t[k] / s[k]:>8.3f}x" for k in keys))
    print()
    extra = paired_median_difference(a, b)
    print(f"  cost per new connection (median of resolver - direct over pairs): {extra:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

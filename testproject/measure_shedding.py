"""``python -m testproject.measure_shedding [RUNS]``: the demo's load-shedding page, run RUNS times (10)
on the demo's three services started as ``make demo`` starts them (free ports, in-memory database);
prints each run's share answered and latencies by priority, then the range over all runs: the figures
the README quotes."""

import argparse
import re
import sys
import tempfile
import urllib.request
from pathlib import Path

from testproject import launcher

ROW = re.compile(
    r'data-priority="(?P<priority>\w+)" data-calls="(?P<calls>\d+)" data-answered="(?P<answered>\d+)".*?'
    r'<td class="num">(?P<p50>[\d.]+) ms</td><td class="num">(?P<p99>[\d.]+) ms</td>',
    re.S,
)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("runs", type=int, nargs="?", default=10)
    args = parser.parse_args(argv)
    ports = dict(zip(("frontend", "orders", "billing"), free_ports(3), strict=True))
    success: dict[str, list[float]] = {}
    latency: dict[str, list[float]] = {"p50": [], "p99": []}
    with (
        tempfile.TemporaryDirectory() as logs,
        launcher.running(ports, environment={"DEMO_DATABASE": ":memory:"}, log_dir=Path(logs)),
    ):
        url = f"http://127.0.0.1:{ports['frontend']}/shedding/?start=1"
        for run in range(args.runs):
            with _NO_PROXY.open(url, timeout=60) as response:
                page = response.read().decode()
            rows = [match.groupdict() for match in ROW.finditer(page)]
            for row in rows:
                answered, calls = int(row["answered"]), int(row["calls"])
                success.setdefault(row["priority"], []).append(answered / calls)
                if answered:
                    latency["p50"].append(float(row["p50"]))
                    latency["p99"].append(float(row["p99"]))
            print(
                f"run {run + 1}: "
                + ", ".join(
                    f"{r['priority']} {int(r['answered']) / int(r['calls']):.0%} of {r['calls']}" for r in rows
                ),
                flush=True,
            )
    print(
        f"over {args.runs} runs, answered: "
        + ", ".join(f"{priority} {min(s):.0%}-{max(s):.0%}" for priority, s in success.items())
        + f"; answered calls p50 {min(latency['p50']):.0f}-{max(latency['p50']):.0f} ms,"
        f" p99 {min(latency['p99']):.0f}-{max(latency['p99']):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

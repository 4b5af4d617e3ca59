"""Load shedding against independent callers: light load, and a burst after a quiet spell.

``benchmarks/shedding.py`` drives closed-loop callers (each waits for its answer). Independent
callers do not: requests come at random times (a Poisson stream, one new connection each) whatever
the server is doing. Two things are measured, under gunicorn (gthread, or ``--kind
gunicorn-priority``), one worker, ``--threads`` threads, views spending ``--cpu-ms`` of CPU:

* **light load**: ``--light-rate`` normal-priority requests a second (about a third of what one
  thread serves at the defaults): the share answered 503. Shedding should refuse none of them.
* **burst after quiet**: 3 s of a trickle, 4 s of nothing, then ``--burst-rate`` requests a second
  for 3 s (2.5 times the capacity at the defaults), 80% normal and 20% high priority: high
  priority's p50 and p99 of the requests sent in the burst's first half (1.5 s), when the server
  has not yet seen the flood, and how many of them were answered after their 1 s deadline.

The baseline is the same server with ``SHEDDING`` off, measured in the same run: one round is the
two servers, each taking the light load then the burst, the order flipping every round (these
machines are noisy). Ratios are shedding / no shedding of the same figure; a burst's high-priority
p50 below 1x means shedding served high priority sooner than a server with no shedding at all.

    .venv/bin/python -m benchmarks.shedding_open_loop [--threads 2] [--cpu-ms 20] [--light-rate 16]
        [--burst-rate 25 --burst-cpu-ms 100] [--rounds 3] [--kind gunicorn|gunicorn-priority]
        [--warmup 2 --trickle 3 --quiet 4 --burst-seconds 3]
"""

import argparse
import http.client
import platform
import random
import statistics
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

from benchmarks._shedding_load import server


class Answer(NamedTuple):
    priority: str
    sent_at: float  # seconds after the phase began
    status: int
    elapsed: float


def send(url: str, path: str, priority: str, *, began: float, into: list[Answer], deadline: float = 1.0) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    started = time.monotonic()
    headers = {"X-Request-Timeout": f"{deadline:g}", "X-Request-Priority": priority}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        connection.close()
    into.append(Answer(priority, started - began, status, time.monotonic() - started))


def poisson(
    url: str, path: str, rate: float, seconds: float, *, mix: Sequence[str], rng: random.Random
) -> list[Answer]:
    """Requests at random times, ``rate`` a second for ``seconds``, each of a priority drawn from ``mix``."""
    answers: list[Answer] = []
    senders = []
    began = time.monotonic()
    due = began
    while rate > 0:
        due += rng.expovariate(rate)
        if due >= began + seconds:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        sender = threading.Thread(
            target=send, args=(url, path, rng.choice(mix)), kwargs={"began": began, "into": answers}
        )
        sender.start()
        senders.append(sender)
    time.sleep(max(0.0, began + seconds - time.monotonic()))
    for sender in senders:
        sender.join(30)
    return answers


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


class Figures(NamedTuple):
    light_sent: int
    light_refused: int
    burst_high: list[float]  # elapsed of high-priority answers (200) sent in the burst's first half
    burst_high_sent: int  # high-priority requests sent in the burst's first half
    burst_high_late: int  # of those, answered after their 1 s deadline or not 200


def measure(url: str, args: argparse.Namespace, seed: int) -> Figures:
    rng = random.Random(seed)
    light_path = f"/cpu?ms={args.cpu_ms:g}"
    poisson(url, light_path, args.light_rate, args.warmup, mix=["normal"], rng=rng)  # the limit learned
    light = poisson(url, light_path, args.light_rate, args.seconds, mix=["normal"], rng=rng)
    burst_path = f"/cpu?ms={args.burst_cpu_ms:g}"
    poisson(url, burst_path, 2.0, args.trickle, mix=["normal"], rng=rng)
    time.sleep(args.quiet)
    burst = poisson(url, burst_path, args.burst_rate, args.burst_seconds, mix=["normal"] * 4 + ["high"], rng=rng)
    early = [a for a in burst if a.priority == "high" and a.sent_at < args.burst_seconds / 2]
    return Figures(
        light_sent=len(light),
        light_refused=sum(a.status != 200 for a in light),
        burst_high=[a.elapsed for a in early if a.status == 200],
        burst_high_sent=len(early),
        burst_high_late=sum(a.status != 200 or a.elapsed > 1.0 for a in early),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="gunicorn", choices=["gunicorn", "gunicorn-priority"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-ms", type=float, default=20.0, help="CPU a light-load request's view spends (20)")
    parser.add_argument("--light-rate", type=float, default=16.0, help="light-load requests a second (16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="counted seconds of light load (10)")
    parser.add_argument("--burst-cpu-ms", type=float, default=100.0, help="CPU a burst request's view spends (100)")
    parser.add_argument("--burst-rate", type=float, default=25.0, help="burst requests a second (25)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of light load before it is counted (2)")
    parser.add_argument("--trickle", type=float, default=3.0, help="seconds of 2 requests/s before the quiet (3)")
    parser.add_argument("--quiet", type=float, default=4.0, help="seconds of nothing before the burst (4)")
    parser.add_argument("--burst-seconds", type=float, default=3.0, help="its first half is counted (3)")
    args = parser.parse_args()
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"# {python}, {args.kind}, 1 worker x {args.threads} threads")
    print(
        f"# light: {args.light_rate:g}/s normal to {args.cpu_ms:g} ms views for {args.seconds:g} s;"
        f" burst: {args.burst_rate:g}/s (80% normal, 20% high) to {args.burst_cpu_ms:g} ms views after 4 s of quiet"
    )
    results: dict[str, list[Figures]] = {"shedding": [], "none": []}
    for round_ in range(args.rounds):
        order = ["shedding", "none"] if round_ % 2 == 0 else ["none", "shedding"]
        for variant in order:
            config = {"shedding": True if variant == "shedding" else None}
            with server(args.kind, args.threads, config) as url:
                figures = measure(url, args, seed=1000 + round_)
            results[variant].append(figures)
            high = figures.burst_high
            print(
                f"round {round_ + 1} {variant:8s}: light {figures.light_refused}/{figures.light_sent} refused;"
                f" burst high p50 {1000 * percentile(high, 0.5):.0f} ms p99 {1000 * percentile(high, 0.99):.0f} ms,"
                f" {figures.burst_high_late} late or refused",
                flush=True,
            )
    print()
    print("| figure | shedding | no shedding | ratio |")
    print("| --- | --- | --- | --- |")
    light = {v: (sum(f.light_refused for f in fs), sum(f.light_sent for f in fs)) for v, fs in results.items()}
    worst = max(f.light_refused / max(1, f.light_sent) for f in results["shedding"])
    print(
        f"| light load refused (all rounds; worst round) | {light['shedding'][0]}/{light['shedding'][1]};"
        f" {100 * worst:.1f}% | {light['none'][0]}/{light['none'][1]} | |"
    )
    for share, name in ((0.5, "p50"), (0.99, "p99")):
        ours = [percentile(f.burst_high, share) for f in results["shedding"]]
        base = [percentile(f.burst_high, share) for f in results["none"]]
        ratios = [a / b for a, b in zip(ours, base, strict=True) if b > 0]  # nan (no answer) compares False
        ratio = f"{statistics.median(ratios):.2f}x; {max(ratios):.2f}x" if ratios else "n/a (no high request)"
        print(
            f"| burst high {name}, first half (median of rounds; worst round's ratio) |"
            f" {1000 * statistics.median(ours):.0f} ms | {1000 * statistics.median(base):.0f} ms | {ratio} |"
        )
    late = {v: sum(f.burst_high_late for f in fs) for v, fs in results.items()}
    sent = {v: sum(f.burst_high_sent for f in fs) for v, fs in results.items()}
    print(f"| burst high late or refused | {late['shedding']}/{sent['shedding']} | {late['none']}/{sent['none']} | |")


if __name__ == "__main__":
    main()

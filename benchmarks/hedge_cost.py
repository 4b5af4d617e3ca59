"""What a hedge costs the caller in CPU: single attempts and hedged calls, interleaved, by thread count.

``benchmarks/load.py`` showed hedged runs spending 10-17% more of the caller's CPU a call than single
ones, more than their 5-9% extra requests explain. This measures that cost on its own, without
Django or gunicorn around it.

The server is ``benchmarks/_server.py`` in a child process (its CPU is not the caller's). It answers
at once, except every ``--slow-every`` (20th) request it reads, which it answers after ``--slow-ms``
(100) ms. The caller is this process: for each entry of ``--threads`` (1,2,8), that many threads
make calls back to back (a closed loop), through one of three clients, each with breaker and metrics
on (``dar.setup()``'s defaults):

* ``single``: ``single_attempt_strategy()``;
* ``hedged, never fires``: ``parallel_strategy(attempts_count=2)`` with a constant 5 s delay: the
  strategy's own work (its state, a timer entry set and cancelled), no hedge;
* ``hedged``: the same with a constant ``--delay-ms`` (20) ms delay: every slow request gets a hedge,
  which wins, and attempt 0 is aborted;
* ``never fires, short tail``: as ``hedged, never fires``, against a second server whose slow
  requests take the hedge delay and 1 ms: its calls end when the hedged ones do, so as many caller
  threads are busy at once. The control for a cost hedging does not cause: with several threads, a
  caller's CPU a call grows with how many of them run at once (the GIL and its hand-overs), and a
  tail cut short keeps more of them running.

``--rounds`` (6) rounds of ``--calls`` (1,600) calls per client, the order turning round every round
(ABC, CBA, ...), after a warm-up round. Figures, medians over the rounds: the CPU of this whole
process per call (``getrusage``: user + system, every thread: the callers, the client's attempt
workers, its timer and metrics threads), its system part, and the callers' own threads' CPU
(``time.thread_time()``); hedges per call (``aio_request_attempts_total{attempt="1"}``). "CPU per
hedge" is (hedged - never fires) / hedges per call: what one fired hedge costs the caller in all,
also counted in single calls' worth; "of which the hedge itself" is (hedged - never fires, short tail)
/ hedges per call, the rest being the busier threads.

    .venv/bin/python -m benchmarks.hedge_cost [--threads 1,2,8] [--calls 1600] [--rounds 6] [--delay-ms 20]
        [--slow-every 20] [--slow-ms 100]
"""

import argparse
import platform
import resource
import statistics
import threading
import time
from collections.abc import Sequence

import django_aio_request as dar
from benchmarks._server import serve_in_subprocess
from benchmarks.hedge_safety import caller_total
from django_aio_request import metrics as all_metrics

NEVER_SECONDS = 5.0
VARIANTS = ("single", "hedged, never fires", "never fires, short tail", "hedged")


def make_client(url: str, variant: str, delay: float) -> dar.Client:
    if variant == "single":
        strategy = dar.single_attempt_strategy()
    else:
        seconds = delay if variant == "hedged" else NEVER_SECONDS
        strategy = dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=seconds))
    return dar.setup(endpoint=url, safe_method_strategy=strategy)


def hedges_sent() -> float:
    """Second attempts sent by every client of this process so far."""
    all_metrics.flush()
    return caller_total("aio_request_attempts_total", attempt="1")


def run(client: dar.Client, calls: int, threads: int) -> tuple[float, float, float, float]:
    """``calls`` calls from ``threads`` threads.

    Returns the process's CPU ms a call, its system part, the callers' threads' CPU ms a call and hedges a call.
    """
    request = dar.get("ping")
    each = calls // threads
    own: list[float] = []
    failures: list[int] = []

    def loop() -> None:
        started = time.thread_time()
        for _ in range(each):
            with client.request(request) as response:
                if response.status != 200:
                    failures.append(response.status)
                response.read()
        own.append(time.thread_time() - started)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    hedges, before = hedges_sent(), resource.getrusage(resource.RUSAGE_SELF)
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    if failures:
        raise RuntimeError(f"{len(failures)} calls failed: {sorted(set(failures))}")
    done = each * threads
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return (user + system) / done * 1e3, system / done * 1e3, sum(own) / done * 1e3, (hedges_sent() - hedges) / done


def measure(
    url: str, short_tail_url: str, threads: int, args: argparse.Namespace
) -> dict[str, list[tuple[float, float, float, float]]]:
    clients = {
        variant: make_client(
            short_tail_url if variant == "never fires, short tail" else url, variant, args.delay_ms / 1000
        )
        for variant in VARIANTS
    }
    for client in clients.values():
        run(client, max(threads * 20, args.calls // 4), threads)  # connections opened, threads started
    results: dict[str, list[tuple[float, float, float, float]]] = {variant: [] for variant in VARIANTS}
    for index in range(args.rounds):
        for variant in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
            results[variant].append(run(clients[variant], args.calls, threads))
    for client in clients.values():
        client.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2,8", help="caller thread counts, comma-separated")
    parser.add_argument("--calls", type=int, default=1600, help="calls per client per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the hedged client's hedge delay")
    parser.add_argument("--slow-every", type=int, default=20)
    parser.add_argument("--slow-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.threads.split(",")]
    if any(count < 1 for count in counts) or args.calls < 1 or args.rounds < 1 or args.slow_every < 1:
        parser.error("--threads, --calls, --rounds and --slow-every must be positive")

    print(__doc__.split("\n\n")[0])
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {platform.python_version()}, "
        f"{platform.machine()}; server: 1 in {args.slow_every} requests after {args.slow_ms:g} ms; "
        f"hedged: 2 attempts, the second after {args.delay_ms:g} ms; {args.rounds} rounds of {args.calls} calls"
    )
    print()
    print("| threads | client | CPU ms a call (process) | of it system | callers' threads | hedges a call | / single |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summaries = []
    short_tail = (args.delay_ms + 1) / 1000
    with (
        serve_in_subprocess(slow_every=args.slow_every, slow_seconds=args.slow_ms / 1000) as url,
        serve_in_subprocess(slow_every=args.slow_every, slow_seconds=short_tail) as short_tail_url,
    ):
        for threads in counts:
            results = measure(url, short_tail_url, threads, args)
            medians = {
                variant: [statistics.median(row[column] for row in rows) for column in range(4)]
                for variant, rows in results.items()
            }
            single = medians["single"][0]
            for variant in VARIANTS:
                cpu, system, own, hedges = medians[variant]
                figures = f"{cpu:.3f} | {system:.3f} | {own:.3f} | {hedges:.3f} | {cpu / single:.3f}x"
                print(f"| {threads} | {variant} | {figures} |")
            hedged, hedges = medians["hedged"][0], medians["hedged"][3]
            per_hedge = (hedged - medians["hedged, never fires"][0]) / hedges if hedges else float("nan")
            itself = (hedged - medians["never fires, short tail"][0]) / hedges if hedges else float("nan")
            summaries.append((threads, per_hedge, itself, single, medians["hedged, never fires"][0] / single))
    print()
    for threads, per_hedge, itself, single, never in summaries:
        print(
            f"{threads} thread(s): a hedge that fires costs the caller {per_hedge:.2f} ms of CPU "
            f"({per_hedge / single:.1f} single calls' worth), of which the hedge itself {itself:.2f} ms "
            f"({itself / single:.1f}); a hedge that never fires {never:.3f}x a single call"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Load shedding under overload, on real servers: ``"SHEDDING": True`` (no MAX_CONCURRENCY) against none.

For each thread count (1, 2, 4, 8, 16, 32), a service (``benchmarks/_shedding_service.py``) runs under
gunicorn with one gthread worker of that many threads; its view spends ``--cpu-ms`` (default 5) of
its thread's CPU time, holding the GIL as Python code does (so it takes longer while other threads
hold the GIL); with ``--slow F``, a share F of the requests then waits ``--slow-ms`` (150) ms, as a
view whose query is now and then slow (``/tail``). Closed-loop callers
(``benchmarks/_shedding_load.py``: one request at a time each, ``Retry-After`` honoured after a 503)
cycle through the priorities high, normal, low, normal, low (20/40/40), every request with
``X-Request-Timeout: --deadline``.

Per thread count, two servers run side by side, one without shedding and one with
``"SHEDDING": True``; for 2x and then 4x, the loads alternate between them, so that other work on a
shared machine weighs on the baseline and on what is compared with it alike:

1. *unloaded*, without shedding: as many callers as threads (every thread busy, none waiting):
   the capacity (requests per second answered 200 in time) and the high-priority p99;
2. *with shedding* at 2x (then 4x) as many callers;
3. *without shedding* at the same load;

then *impostors*: ``PRIORITY_POLICY = "known_services"``, 2x callers naming a known service, plus 20
callers with no known name claiming high on every request.

The first ``--warmup`` seconds of each load are not counted (the limit is being learned then).
Columns: *high ok*: high-priority requests answered 200 within the deadline; *goodput*: requests
answered 200 in time per second, against the unloaded capacity; *high p99*: p99 of high-priority
requests answered 200, against the unloaded p99; *limit*: the learned concurrency limit at the end.
Targets with shedding: high ok >= 99.5%, goodput >= 90%, high p99 <= 2x; with impostors, real high
ok >= 99%. Each cell says MET or MISSED; the worst case is printed at the end.

    .venv/bin/python -m benchmarks.shedding [--quick] [--threads 1,2,4] [--cpu-ms 5] [--slow 0.05]
        [--slow-ms 150] [--deadline 0.5] [--switch-interval none|SECONDS]

``--quick`` runs 2 s loads after 1 s of warm-up, on threads 1,4,16 unless ``--threads`` is given.
"""

import argparse
import dataclasses
import os
import platform
import time
from collections.abc import Sequence

from benchmarks._shedding_load import Callers, Outcome, closed_loop, metric, server
from benchmarks._stats import percentile

IMPOSTORS = 20


@dataclasses.dataclass(frozen=True)
class Figures:
    high_ok: float  # share of high-priority requests answered 200 within the deadline
    goodput: float  # requests answered 200 in time, per second
    high_p99: float  # seconds, over high-priority requests answered 200
    shed: float  # share of all requests answered 503
    impostor_ok: float = float("nan")


def figures(outcomes: list[Outcome], seconds: float, deadline: float) -> Figures:
    real = [o for o in outcomes if o.caller == "real"]
    high = [o for o in real if o.priority == "high"]
    in_time = [o for o in real if o.status == 200 and o.elapsed <= deadline]
    served_high = sorted(o.elapsed for o in high if o.status == 200)
    impostors = [o for o in outcomes if o.caller == "impostor"]
    return Figures(
        high_ok=sum(o.status == 200 and o.elapsed <= deadline for o in high) / max(1, len(high)),
        goodput=len(in_time) / seconds,
        high_p99=percentile(served_high, 99) if served_high else float("nan"),
        shed=sum(o.status == 503 for o in real) / max(1, len(real)),
        impostor_ok=(sum(o.status == 200 and o.elapsed <= deadline for o in impostors) / len(impostors))
        if impostors
        else float("nan"),
    )


def load(url: str, groups: Sequence[Callers], *, path: str, warmup: float, seconds: float, deadline: float) -> Figures:
    outcomes = closed_loop(url, groups, path=path, seconds=warmup + seconds, deadline=deadline,
                           backoff=0.01)  # fmt: skip
    began = min(o.ended - o.elapsed for o in outcomes)
    counted = [o for o in outcomes if o.ended - o.elapsed >= began + warmup and o.ended <= began + warmup + seconds]
    time.sleep(1.2)  # callers stepping back for Retry-After are gone before the next load
    return figures(counted, seconds, deadline)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:  # noqa: PLR0915 - one table, printed as it is measured
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default=None, help="default 1,2,4,8,16,32 (--quick: 1,4,16)")
    parser.add_argument("--cpu-ms", type=float, default=5.0)
    parser.add_argument("--slow", type=float, default=0.0, help="share of requests that then wait (default 0)")
    parser.add_argument("--slow-ms", type=float, default=150.0, help="how long those wait, ms (150)")
    parser.add_argument("--deadline", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=4.0, help="counted seconds of each load")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--quick", action="store_true", help="threads 1,4,16; 2 s loads after 1 s of warm-up")
    parser.add_argument(
        "--switch-interval",
        default=None,
        help="SHEDDING['SWITCH_INTERVAL'] of the server with shedding: seconds, or 'none' (the "
        "interpreter's own, 5 ms); default: the setting's default",
    )
    parser.add_argument(
        "--worker",
        choices=("gthread", "priority"),
        default="gthread",
        help="the gunicorn worker of the servers with shedding: gthread, or priority "
        "(django_aio_request.server.priority_worker.PriorityThreadWorker); the servers without stay gthread",
    )
    args = parser.parse_args()
    shedding_kind = "gunicorn" if args.worker == "gthread" else "gunicorn-priority"
    shedding: object = True
    if args.switch_interval is not None:
        value = None if args.switch_interval.lower() == "none" else float(args.switch_interval)
        shedding = {"SWITCH_INTERVAL": value}
    if args.quick:
        args.threads, args.seconds, args.warmup = args.threads or "1,4,16", 2.0, 1.0
    args.threads = args.threads or "1,2,4,8,16,32"
    path = f"/cpu?ms={args.cpu_ms:g}"
    if args.slow:
        path = f"/tail?ms={args.cpu_ms:g}&slow={args.slow:g}&slow_ms={args.slow_ms:g}"
    timing = {"path": path, "warmup": args.warmup, "seconds": args.seconds, "deadline": args.deadline}
    print(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs (shared machine: "
          f"other work may run at the same time)")  # fmt: skip
    tail = f", then {args.slow:.0%} of requests wait {args.slow_ms:g} ms" if args.slow else ""
    print(f"servers with shedding: gunicorn worker {args.worker}")
    print(f"view: {args.cpu_ms:g} ms of CPU{tail}; deadline {args.deadline:g} s; callers cycle "
          f"high/normal/low/normal/low and honour Retry-After; {args.warmup:g} s warm-up, "
          f"{args.seconds:g} s counted per load\n")  # fmt: skip
    header = (f"{'threads':>7} {'load':>4} | {'unloaded':>8} {'high p99':>9} | {'without: high ok':>16} {'goodput':>8} "
              f"{'high p99':>9} | {'with: high ok':>13} {'goodput':>8} {'high p99':>9} {'shed':>6} {'limit':>5} | "
              "verdict")  # fmt: skip
    print(f"{'':>13}| unloaded: as many callers as threads, without shedding, measured just before the row's loads; "
          "goodput and p99 against it")  # fmt: skip
    print(header)
    print("-" * len(header))
    worst: dict[str, tuple[float, str]] = {}
    impostor_rows: list[str] = []
    started = time.monotonic()

    def note(name: str, value: float, where: str, *, lower_is_worse: bool = True) -> None:
        best = worst.get(name)
        if best is None or (value < best[0] if lower_is_worse else value > best[0]):
            worst[name] = (value, where)

    for threads in [int(t) for t in args.threads.split(",")]:
        # Both servers run side by side and the loads alternate between them, so that other work on
        # a shared machine weighs on the baseline and on the figures compared with it alike.
        with (
            server("gunicorn", threads, {"shedding": None}) as off,
            server(shedding_kind, threads, {"shedding": shedding}) as on,
        ):
            for m in (2, 4):
                unloaded = load(off, [Callers(threads)], **timing)
                on_ = load(on, [Callers(m * threads)], **timing)
                limit = metric(on, "aio_request_server_concurrency_limit")
                off_ = load(off, [Callers(m * threads)], **timing)
                capacity, p99 = unloaded.goodput, unloaded.high_p99
                goodput, ratio = on_.goodput / capacity, on_.high_p99 / p99
                ok = on_.high_ok >= 0.995 and goodput >= 0.9 and ratio <= 2
                where = f"{threads} threads {m}x"
                note("high ok", on_.high_ok, where)
                note("goodput", goodput, where)
                note("high p99 ratio", ratio, where, lower_is_worse=False)
                print(f"{threads if m == 2 else '':>7} {f'{m}x':>4} | {capacity:>6.0f}/s {p99 * 1000:>7.1f}ms | "
                      f"{off_.high_ok:>16.1%} {off_.goodput / capacity:>8.0%} {off_.high_p99 / p99:>8.1f}x | "
                      f"{on_.high_ok:>13.1%} {goodput:>8.0%} {ratio:>8.1f}x {on_.shed:>6.0%} {limit:>5.0f} | "
                      f"{verdict(ok)}", flush=True)  # fmt: skip
        policy = {"shedding": {"PRIORITY_POLICY": "known_services"}, "known_services": ["known"]}
        with server(shedding_kind, threads, policy) as url:
            groups = [Callers(2 * threads), Callers(IMPOSTORS, priorities=("high",), service=None, kind="impostor")]
            impostors = load(url, groups, **timing)
        note("real high ok with impostors", impostors.high_ok, f"{threads} threads")
        impostor_rows.append(
            f"{threads:>7} | {impostors.high_ok:>13.1%} {impostors.impostor_ok:>19.1%} {impostors.shed:>12.0%} | "
            f"{verdict(impostors.high_ok >= 0.99)}"
        )
    print(f"\n{IMPOSTORS} impostors claiming high (no known X-Service-Name) beside 2x real callers, "
          "PRIORITY_POLICY = 'known_services':")  # fmt: skip
    print(f"{'threads':>7} | {'real high ok':>13} {'impostors in time':>19} {'real shed':>12} | verdict")
    for row in impostor_rows:
        print(row)
    print("\nworst case with shedding:")
    for name, (value, where) in worst.items():
        shown = f"{value:.1f}x" if "ratio" in name else f"{value:.1%}"
        print(f"  {name}: {shown} ({where})")
    print(f"\n{time.monotonic() - started:.0f} s in all")


if __name__ == "__main__":
    main()

"""``make demo``: migrate, create the demo admin login, start the chain frontend -> orders -> billing
(one process each, on 127.0.0.1), print where to look, and stop them all on Ctrl-C."""

import errno
import fcntl
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from types import FrameType


class _StopNote:
    """A flag the signal handlers raise, with no lock: a handler runs in the main thread between two
    of its steps, and one that took a lock the main thread held just then (``threading.Event.set()``
    while the demo's wait was inside ``Event.wait()``) waited for itself: a Ctrl-C right after "Demo
    running" hung the demo for good (CI, and 3 of 5 tries with the wait polled back to back)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


# Set by a Ctrl-C (or `kill`) before the KeyboardInterrupt it raises: one raised while an import's
# weakref callback runs is reported as "Exception ignored" and lost (a review: 1 in 18-34 Ctrl-Cs in
# the first 0.3 s, and the demo started anyway), so each step of the start looks at this too.
_STOP = _StopNote()


def _stop(signum: int, frame: FrameType | None) -> None:
    _STOP.set()
    raise KeyboardInterrupt


def _quiet_dropped_interrupt(unraisable: "sys.UnraisableHookArgs") -> None:
    """``sys.unraisablehook`` while the demo runs: a Ctrl-C's KeyboardInterrupt that Python dropped
    (raised while a weakref callback ran) is noted in ``_STOP`` and acted on at the next step, so it
    is not printed as "Exception ignored in: ... Traceback" (3 of 12 Ctrl-Cs at 0.3 s on a loaded
    machine printed one). Anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _STOP.is_set():
        return
    sys.__unraisablehook__(unraisable)


def _note_stop(signum: int, frame: FrameType | None) -> None:
    """The Ctrl-C handler while ``migrate`` runs: the stop comes once it is over (:func:`_migrate`)."""
    _STOP.set()


def _migrate(call_command: Callable[..., object]) -> str | None:
    """``migrate``, never stopped halfway; what to tell the user if the database cannot be migrated.

    A migration whose SQL is partly deferred is recorded as applied after its transaction commits:
    a Ctrl-C in between left its tables with no record, and every later start failed with "table ...
    already exists" (CI, a Ctrl-C 0.8 s into the start). A Ctrl-C (or several) meanwhile stops the
    demo once migrate is over (0.33 s for a new database, measured)."""
    from django.conf import settings
    from django.db import DatabaseError

    signal.signal(signal.SIGINT, _note_stop)
    signal.signal(signal.SIGTERM, _note_stop)
    path = settings.DATABASES["default"]["NAME"]
    try:
        # One migrate at a time on a database: two demos started at once on a new one both created its
        # tables, and the second said the database could not be migrated ("table ... already exists")
        # and to delete it, while the first was using it (a review).
        with open(f"{path}.migrate-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            call_command("migrate", verbosity=0)
    except DatabaseError as error:
        # A database an older demo left so (or one edited by hand): what to do, not a traceback.
        return (
            f"make demo: its database {path} cannot be migrated ({error}); delete it (or set"
            " DEMO_DATABASE to another file) and start again."
        )
    finally:
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
    _unless_stopped()
    return None


def _unless_stopped() -> None:
    if _STOP.is_set():
        raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C, and `kill <pid>`, stop the demo and the services (SIGINT even when started in the
    # background, where the shell has it ignored).
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    sys.unraisablehook = _quiet_dropped_interrupt
    # Imported here, not at the top: a Ctrl-C while they load ends in the message below too.
    import django
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import call_command

    os.environ["DJANGO_SETTINGS_MODULE"] = "settings.demo_frontend"  # the frontend owns the database
    try:
        django.setup()
    except ImproperlyConfigured as error:  # a DEMO_PORT that is no port: the message, not a traceback
        print(f"make demo: {error}", file=sys.stderr)
        return 2
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from testproject import launcher  # reads settings.demo's ports: after the check above

    _unless_stopped()

    ports: dict[str, int] = dict(getattr(settings, "DEMO_PORTS"))  # noqa: B009 - not in the type checker's settings
    problems = {name: _bind_problem(port) for name, port in ports.items()}
    if not any(problems.values()):
        problems = {name: _claim(port) for name, port in ports.items()}  # held until this process ends
    taken = [f"port {ports[name]} ({name}) {problem}" for name, problem in problems.items() if problem]
    if taken:
        print(
            f"make demo: {', '.join(taken)}. Set DEMO_PORT (and DEMO_ORDERS_PORT, DEMO_BILLING_PORT) for other ports.",
            file=sys.stderr,
        )
        return 1
    problem = _migrate(call_command)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    user_model = get_user_model()
    if not user_model.objects.filter(username="demo").exists():
        user_model.objects.create_superuser("demo", "demo@example.invalid", "demo")
    _unless_stopped()
    print("Starting " + ", ".join(f"{name} on :{port}" for name, port in ports.items()) + " ...", flush=True)
    try:
        with launcher.running(ports) as services:
            _unless_stopped()
            _print_urls(ports)
            ended = launcher.wait_for_exit(services, stop=_STOP)
            print(f"{ended.name} stopped (exit code {ended.returncode}); stopping the others.", file=sys.stderr)
            return 1
    except launcher.ServiceFailed as error:
        print(f"make demo: {error}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopped frontend, orders and billing.")
        return 0


IN_USE = "already in use (another demo still running?)"
_claims: list[object] = []  # the port claims this demo holds, open until the process ends


def _bind_problem(port: int) -> str | None:
    """Why the services could not listen on ``port`` of 127.0.0.1 (they bind there), or None. With
    SO_REUSEADDR, as the services' servers bind: a port a stopped demo left in TIME_WAIT is free. A
    port the user may not bind (below 1024 without root) was said to be in use (a review)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except PermissionError:
            return "may not be used by this user (ports below 1024 need root)"
        except OSError as error:
            return IN_USE if error.errno == errno.EADDRINUSE else f"cannot be listened on ({error.strerror})"
    return None


def _claim(port: int) -> str | None:
    """Claim ``port`` for this demo until it ends (a lock file per port, which the system releases
    when the process ends, however it ends), or say it is taken. Two demos started at the same moment
    both found the port free, and the second's services failed to start after its migrate (a review)."""
    lock = open(os.path.join(tempfile.gettempdir(), f"django-aio-request-demo-{port}.lock"), "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return IN_USE
    _claims.append(lock)
    return None


def _print_urls(ports: dict[str, int]) -> None:
    frontend = f"http://127.0.0.1:{ports['frontend']}"
    print(
        f"""
Demo running: frontend -> orders -> billing, each its own process.
  {frontend}/chain/     deadline and priority as each hop received them, and each hop's time
  {frontend}/hedging/   single attempt versus hedging against billing's 5% slow tail (SVG histograms)
  {frontend}/shedding/  orders overloaded by callers of three priorities: what it answers and sheds
  {frontend}/           one call to billing through each strategy (single, sequential, hedged)
  {frontend}/admin/     admin, login demo / demo
JSON: /demo/hop (one hop of the chain) and /demo/stats (requests received) on every service:
  orders  http://127.0.0.1:{ports["orders"]}/demo/stats
  billing http://127.0.0.1:{ports["billing"]}/demo/stats
Stop with Ctrl-C.
""",
        flush=True,
    )


def run() -> int:
    """``main()``; a Ctrl-C before the services started (Django loading, ``migrate``, the demo login)
    ends it with a word, not a KeyboardInterrupt traceback (a review: the first second or so of
    ``make demo``). What it left half done is done at the next start: migrate goes on where it stopped
    (a Ctrl-C never stops migrate halfway: :func:`_migrate`)."""
    try:
        return main()
    except KeyboardInterrupt:
        return _stopped_before_the_services()
    except Exception as error:
        # A Ctrl-C's KeyboardInterrupt that Python turned into another exception on its way: raised in
        # a descriptor's __set_name__ as a class of an import was made, Python 3.11 reports it as the
        # cause of a RuntimeError ("Error calling __set_name__"), which printed a traceback (CI, a
        # Ctrl-C 0.8 s in, as django_prometheus imported Django's database classes).
        if not (_STOP.is_set() and _interrupted(error)):
            raise
        return _stopped_before_the_services()


def _interrupted(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among ``error``'s causes and contexts."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _stopped_before_the_services() -> int:
    print("\nStopped before the services started.", file=sys.stderr)
    # Nothing was started to stop. Ended here: a KeyboardInterrupt that left a module's code while
    # it ran (an import) marks the interpreter, which then ends itself by SIGINT however it was
    # caught (exit -2 after this message, once in a loaded CI run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(run())

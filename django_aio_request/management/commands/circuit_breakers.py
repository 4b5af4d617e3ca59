"""``manage.py circuit_breakers``: the admin's "Circuit breakers" table, in a terminal."""

import os
import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections
from django.utils import timezone

from django_aio_request.breaker_words import ago, calls, state_note
from django_aio_request.models import COUNT_WINDOW, BreakerStatus, State

COLUMNS = ("state", "client", "endpoint", "processes", f"calls, last {COUNT_WINDOW:.0f} s", "changed", "last seen")


def table(rows: list[BreakerStatus]) -> list[str]:
    """The lines of the table: a header, then one line per client and endpoint, columns aligned.
    The same columns as the admin list; a state's note (probe due, override pending) follows it."""
    now = timezone.now()
    cells = []
    for row in rows:
        note = state_note(row, now)
        cells.append(
            (
                State(row.state).label + (f": {note}" if note else ""),
                row.client,
                row.endpoint,
                row.processes_summary(),
                calls(row.failures, row.successes, row.rejected),
                ago(row.changed_at, now),
                ago(row.reported_at, now),
            )
        )
    widths = [max(len(text) for text in column) for column in zip(COLUMNS, *cells, strict=False)]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
            for line in (COLUMNS, *cells)]  # fmt: skip


def _hint(alias: str, error: ImproperlyConfigured) -> str:
    """What to look at, for a database Django cannot use."""
    if settings.DATABASES.get(alias, {}).get("ENGINE") == "django.db.backends.dummy":
        return "no database is configured"  # DATABASES = {} reads as a "dummy" default, whose every use raises
    if "isn't an available database backend" in str(error):
        return "check its ENGINE"
    return "check its settings"  # a NAME left out, say: the message says which


class Command(BaseCommand):
    help = "Print every circuit breaker as all processes report it (the admin's 'Circuit breakers' page)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--client", action="append", help="only this client (repeatable)")
        parser.add_argument("--state", action="append", choices=State.values, help="only this state (repeatable)")
        parser.add_argument("--database", default=None, help="the database alias to read (default: routed)")

    def handle(self, *args: Any, **options: Any) -> None:
        rows = BreakerStatus.objects.all()
        if options["database"] is not None:
            if options["database"] not in connections:
                known = ", ".join(connections) or "none"
                raise CommandError(f"no database {options['database']!r} in settings.DATABASES (known: {known})")
            rows = rows.using(options["database"])
        if options["client"]:
            for client in options["client"]:
                try:
                    client.encode()
                except UnicodeEncodeError:  # a byte that is not UTF-8 on the command line: a lone surrogate
                    raise CommandError(f"--client {client!r} is not text (bytes that are not UTF-8)") from None
            rows = rows.filter(client__in=options["client"])
        if options["state"]:
            rows = rows.filter(state__in=options["state"])
        try:
            found = list(rows)
        except ImproperlyConfigured as error:  # DATABASES = {} (clients only), an ENGINE that cannot be loaded
            raise CommandError(f"database {rows.db!r} cannot be used ({error}): {_hint(rows.db, error)}") from None
        except DatabaseError as error:  # not migrated there, or unreachable: say so, no traceback
            raise CommandError(
                f"cannot read the circuit breakers from database {rows.db!r} ({type(error).__name__}: {error});"
                f" {_database_hint(error)}"
            ) from None
        try:
            self._write(found, options)
        except BrokenPipeError:
            # Its reader went away (`| head`): it read what it wanted. A traceback ended the command,
            # and another came at exit, when Python flushed what was left for the closed pipe (a
            # review). Python's docs' advice: what is left goes to /dev/null.
            _drop_what_is_left()
        except OSError as error:  # a full disk, /dev/full
            _drop_what_is_left()
            raise CommandError(f"cannot write the table ({type(error).__name__}: {error})") from None

    def _write(self, found: list[BreakerStatus], options: dict[str, Any]) -> None:
        if not found:
            wanted = (
                " matching "
                + ", ".join(f"{name} {' or '.join(options[name])}" for name in ("client", "state") if options[name])
                if options["client"] or options["state"]
                else ""
            )
            self.stdout.write(
                f"No circuit breaker{wanted} is reported now"
                " (no live process has built a client with one, or made a call)."
            )
        else:
            for line in table(found):
                self.stdout.write(line)
        self.stdout.flush()  # here, where a closed output is handled: not at exit


def _drop_what_is_left() -> None:
    """Point standard output at /dev/null: what is still buffered for it is dropped at exit, not
    written to an output that failed (another traceback)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _database_hint(error: Exception) -> str:
    """What to look at: the app's tables when the database says one is missing (SQLite's "no such
    table", PostgreSQL's "relation ... does not exist", MySQL's "Table ... doesn't exist"), else the
    database itself. A database that timed out or does not exist was asked whether migrate had run."""
    text = str(error)
    if "no such table" in text or ("relation" in text and "does not exist" in text) or "doesn't exist" in text:
        return "has `manage.py migrate django_aio_request` run there?"
    return "is the database reachable, and are its settings right?"

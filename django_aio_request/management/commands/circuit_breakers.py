"""``manage.py circuit_breakers``: the admin's "Circuit breakers" table, in a terminal."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from django_aio_request.models import BreakerStatus, Mode, State

COLUMNS = ("client", "endpoint", "state", "processes", "failures", "successes", "ratio", "last change", "override")


def table(rows: list[BreakerStatus]) -> list[str]:
    """The lines of the table: a header, then one line per client and endpoint, columns aligned."""
    cells = [
        (
            row.client,
            row.endpoint,
            State(row.state).label,
            row.processes_summary(),
            str(row.failures),
            str(row.successes),
            f"{row.failure_ratio:.0%}",
            timezone.localtime(row.changed_at).strftime("%Y-%m-%d %H:%M:%S") if row.changed_at else "never",
            Mode(row.override).label if row.override else "automatic",
        )
        for row in rows
    ]
    widths = [max(len(text) for text in column) for column in zip(COLUMNS, *cells, strict=False)]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
            for line in (COLUMNS, *cells)]  # fmt: skip


class Command(BaseCommand):
    help = "Print every circuit breaker as all processes report it (the admin's 'Circuit breakers' page)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--client", action="append", help="only this client (repeatable)")
        parser.add_argument("--state", action="append", choices=State.values, help="only this state (repeatable)")
        parser.add_argument("--database", default=None, help="the database alias to read (default: routed)")

    def handle(self, *args: Any, **options: Any) -> None:
        rows = BreakerStatus.objects.all()
        if options["database"]:
            rows = rows.using(options["database"])
        if options["client"]:
            rows = rows.filter(client__in=options["client"])
        if options["state"]:
            rows = rows.filter(state__in=options["state"])
        found = list(rows)
        if not found:
            self.stdout.write("No circuit breaker has been reported (no process has built a client with one).")
            return
        for line in table(found):
            self.stdout.write(line)

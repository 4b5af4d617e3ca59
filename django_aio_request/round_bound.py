"""How long the breaker publisher's statements may wait for a lock: ``bounded(alias, seconds)``.

A round reads the overrides and then writes its reports and transitions, one after the other on the
publisher's one thread. A write that waited on a lock (a ``CREATE INDEX`` on the transitions table
takes one that blocks inserts for as long as it runs) held that thread, so no later round read the
overrides: an operator's "force open", acknowledged in admin, was obeyed by no process until the lock
went (a review: none within 6 s, all 1.06-1.09 s after it went). Bounded, the statement fails, the
round says so once, and the next round reads the overrides again.

Only waits for locks are bounded, not how long a statement runs: a prune deleting a backlog of
1.5 million transitions took 2.3 s, and with a 1 s ``statement_timeout`` it was cancelled in every
round and never finished (a review). PostgreSQL: ``lock_timeout`` for a transaction of the block's
own (not where the caller is in one already: a ``SET LOCAL`` there would outlive the block). SQLite:
the connection's busy timeout, put back after the block. Other databases: unbounded.
"""

import contextlib
from collections.abc import Iterator

from django.db import connections, transaction


@contextlib.contextmanager
def bounded(alias: str, seconds: float) -> Iterator[None]:
    """Run the block's statements on database ``alias`` with waits for locks of at most ``seconds``;
    a statement that would wait longer raises the database's error."""
    connection = connections[alias]
    milliseconds = max(1, round(seconds * 1000))
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        with transaction.atomic(using=alias):
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{milliseconds}ms"])
            yield
    elif connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA busy_timeout")
            row = cursor.fetchone()
            before = int(row[0]) if row else 0
            cursor.execute(f"PRAGMA busy_timeout = {milliseconds:d}")
        try:
            yield
        finally:
            if connection.connection is not None:  # not closed by the block's failure
                with connection.cursor() as cursor:
                    cursor.execute(f"PRAGMA busy_timeout = {before:d}")
    else:
        yield

"""Circuit breaker state published by every process for Django admin, and the overrides admin sets.

Breakers live in memory, one per client per process. Each process's publisher thread
(``breaker_publisher``) writes what its breakers look like into ``BreakerReport`` (one row per
client, endpoint, host and pid) and their transitions into ``BreakerTransition``, and reads
``BreakerOverride`` to obey what operators decided. ``BreakerStatus`` is a database view
(migration 0002) folding the reports into one row per client and endpoint for the admin changelist.
"""

from django.db import models
from django.db.models.functions import Now

from django_aio_request.conf.schema import CLIENT_NAME_LENGTH, ENDPOINT_LENGTH


class State(models.TextChoices):
    # The values of circuit_breaker.CircuitState.
    CLOSED = "closed", "closed"
    OPEN = "open", "open"
    HALF_OPEN = "half_open", "half-open"
    FORCED_OPEN = "forced_open", "forced open"
    FORCED_CLOSED = "forced_closed", "forced closed"


class Mode(models.TextChoices):
    # The values of circuit_breaker.Override.
    FORCE_OPEN = "force_open", "forced open (isolated)"
    FORCE_CLOSED = "force_closed", "forced closed"


# Worst first: the state a client and endpoint shows when its processes disagree.
SEVERITY = (State.FORCED_OPEN, State.OPEN, State.HALF_OPEN, State.FORCED_CLOSED, State.CLOSED)

LOCAL_STORE = "local"
# After a shared cache's alias in a report made while that cache does not answer: the process then
# counts on its own until it does, and admin says so (it said "shared in cache" throughout an outage).
UNREACHABLE = " (unreachable)"
STORE_LENGTH = 100
CLIENT_LENGTH = CLIENT_NAME_LENGTH  # settings longer than these are errors (conf/schema.py)
# Reports count the calls of the last COUNT_WINDOW seconds, whatever a breaker's SAMPLING_DURATION:
# a one-second sampling window would show 0 failures nearly always, also while the circuit is open.
COUNT_WINDOW = 60.0
# Who changed an override: a username (auth's are 150 characters at most, an e-mail 254); longer is cut.
CHANGED_BY_LENGTH = 255


class BreakerReport(models.Model):
    """What one process's breaker of a client says about one endpoint, refreshed every second or so.

    A report is a heartbeat: it counts only until ``expires_at`` (a few publishing intervals after it
    was written, on the database's clock), so a process that stops publishing stops counting.
    """

    client = models.CharField(max_length=CLIENT_LENGTH)
    endpoint = models.CharField(max_length=ENDPOINT_LENGTH)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.CLOSED)
    # The calls of the last window_seconds (COUNT_WINDOW; less for a circuit seen more recently).
    failures = models.PositiveIntegerField(default=0)
    successes = models.PositiveIntegerField(default=0)
    failure_ratio = models.FloatField(default=0.0)
    rejected = models.PositiveIntegerField(default=0, help_text="calls answered with the fallback (no request)")
    window_seconds = models.FloatField(default=COUNT_WINDOW)
    changed_at = models.DateTimeField(null=True, blank=True, help_text="when the state last changed; empty: never")
    blocked_until = models.DateTimeField(
        null=True, blank=True, help_text="open: when the break ends and the next call probes; empty: not blocked"
    )
    reported_at = models.DateTimeField(db_index=True)
    expires_at = models.DateTimeField(db_index=True, help_text="the report counts until then (heartbeat)")
    # Where the breaker counted: "local" (this process alone), else the alias of the cache whose counts
    # all processes share, followed by UNREACHABLE while it does not answer. Shown in admin only.
    store = models.CharField(max_length=STORE_LENGTH, default=LOCAL_STORE)

    class Meta:
        verbose_name = "circuit breaker report"
        verbose_name_plural = "circuit breaker reports"
        constraints = [
            models.UniqueConstraint(fields=["client", "endpoint", "host", "pid"], name="aio_request_report_unique")
        ]
        indexes = [models.Index(fields=["client", "endpoint"], name="aio_request_report_endpoint")]

    def __str__(self) -> str:
        return f"{self.client} {self.endpoint} on {self.host}:{self.pid}: {self.state}"


class BreakerTransition(models.Model):
    """One state change of one process's breaker; pruned after ``CIRCUIT_BREAKER_HISTORY_DAYS``."""

    at = models.DateTimeField(db_index=True)
    client = models.CharField(max_length=CLIENT_LENGTH)
    endpoint = models.CharField(max_length=ENDPOINT_LENGTH)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    from_state = models.CharField("from", max_length=16, choices=State.choices)
    to_state = models.CharField("to", max_length=16, choices=State.choices)
    failures = models.PositiveIntegerField(default=0)
    successes = models.PositiveIntegerField(default=0)
    failure_ratio = models.FloatField(default=0.0)

    class Meta:
        verbose_name = "circuit breaker transition"
        verbose_name_plural = "circuit breaker transitions"
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["client", "endpoint", "at"], name="aio_request_transition_ep")]

    def __str__(self) -> str:
        return f"{self.client} {self.endpoint} on {self.host}:{self.pid}: {self.from_state} -> {self.to_state}"


class BreakerOverride(models.Model):
    """An operator's decision for one client and endpoint, obeyed by every process within seconds."""

    client = models.CharField(max_length=CLIENT_LENGTH)
    endpoint = models.CharField(max_length=ENDPOINT_LENGTH)
    mode = models.CharField(max_length=16, choices=Mode.choices)
    # Who set it: the user's get_username() at the time, as text (migration 0005). Not a foreign key to
    # settings.AUTH_USER_MODEL: the app installs and migrates without django.contrib.auth. Empty: unknown.
    changed_by = models.CharField(max_length=CHANGED_BY_LENGTH, blank=True, default="")
    changed_at = models.DateTimeField()

    class Meta:
        verbose_name = "circuit breaker override"
        verbose_name_plural = "circuit breaker overrides"
        constraints = [models.UniqueConstraint(fields=["client", "endpoint"], name="aio_request_override_unique")]
        permissions = [("override_circuit_breaker", "Can force circuit breakers open or closed")]

    def __str__(self) -> str:
        return f"{self.client} {self.endpoint}: {self.mode}"


class BreakerStatus(models.Model):
    """One row per client and endpoint: the live reports of every process folded together (a database
    view, migration 0004). ``state`` is what calls get now: the override when one is set, else the
    worst state a live process reports (``reported_state``)."""

    id = models.CharField(primary_key=True, max_length=CLIENT_LENGTH + ENDPOINT_LENGTH + 1)
    client = models.CharField(max_length=CLIENT_LENGTH)
    endpoint = models.CharField(max_length=ENDPOINT_LENGTH)
    state = models.CharField(max_length=16, choices=State.choices)
    reported_state = models.CharField(max_length=16, choices=State.choices)
    processes = models.PositiveIntegerField()
    closed_count = models.PositiveIntegerField()
    open_count = models.PositiveIntegerField()
    half_open_count = models.PositiveIntegerField()
    forced_open_count = models.PositiveIntegerField()
    forced_closed_count = models.PositiveIntegerField()
    failures = models.PositiveIntegerField()
    successes = models.PositiveIntegerField()
    failure_ratio = models.FloatField()
    rejected = models.PositiveIntegerField()
    changed_at = models.DateTimeField(null=True)
    blocked_until = models.DateTimeField(null=True)  # the earliest end of a break among the open processes
    reported_at = models.DateTimeField()
    override = models.CharField(max_length=16, choices=Mode.choices, null=True)

    class Meta:
        managed = False
        db_table = "django_aio_request_circuitbreaker"
        verbose_name = "circuit breaker"
        verbose_name_plural = "circuit breakers"
        default_permissions = ("view",)
        ordering = ["client", "endpoint"]

    def __str__(self) -> str:
        return f"{self.client} {self.endpoint}"

    def state_counts(self) -> list[tuple[State, int]]:
        """(state, how many processes report it), worst first, only the states reported."""
        counts = {
            State.FORCED_OPEN: self.forced_open_count,
            State.OPEN: self.open_count,
            State.HALF_OPEN: self.half_open_count,
            State.FORCED_CLOSED: self.forced_closed_count,
            State.CLOSED: self.closed_count,
        }
        return [(state, counts[state]) for state in SEVERITY if counts[state]]

    def processes_summary(self) -> str:
        """``"3 processes: 2 open, 1 closed"``."""
        noun = "process" if self.processes == 1 else "processes"
        parts = ", ".join(f"{n} {state.label}" for state, n in self.state_counts())
        return f"{self.processes} {noun}: {parts}"

    def reports(self) -> "models.QuerySet[BreakerReport]":
        """The live reports of this client and endpoint (those the row folds)."""
        return BreakerReport.objects.using(self._state.db).filter(
            client=self.client, endpoint=self.endpoint, expires_at__gt=Now()
        )

    def known_override(self) -> "Mode | None":
        """The override as a :class:`Mode`; None without one, or when its row holds a mode no process
        obeys (written by a script, a fixture or SQL: every process skips it as if it were absent)."""
        try:
            return Mode(self.override) if self.override else None
        except ValueError:
            return None

    def pending(self) -> int:
        """How many live processes do not show the override yet, or still show one that was lifted
        (they apply the change at their next round)."""
        forced = {Mode.FORCE_OPEN: self.forced_open_count, Mode.FORCE_CLOSED: self.forced_closed_count}
        override = self.known_override()
        if override is not None:
            return self.processes - forced[override]
        return sum(forced.values())  # lifted: those still forced have not gone back to automatic yet

    def transitions(self) -> "models.QuerySet[BreakerTransition]":
        return BreakerTransition.objects.using(self._state.db).filter(client=self.client, endpoint=self.endpoint)


def breaker_id(client: str, endpoint: str) -> str:
    """The primary key of a ``BreakerStatus`` row (endpoints are URLs: they never hold a space)."""
    return f"{client} {endpoint}"

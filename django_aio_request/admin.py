"""Django admin: "Circuit breakers" (one row per client and endpoint, every process folded together),
their transitions, and the overrides operators set with the actions "Force open (isolate)",
"Force closed" and "Back to automatic" (permission ``django_aio_request.override_circuit_breaker``)."""

import datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from django_aio_request.models import BreakerOverride, BreakerStatus, BreakerTransition, Mode, State

OVERRIDE_PERMISSION = "django_aio_request.override_circuit_breaker"
RECENT_TRANSITIONS = 50

STATE_COLOURS = {
    State.CLOSED: "#2e7d32",
    State.OPEN: "#c62828",
    State.HALF_OPEN: "#ef6c00",
    State.FORCED_OPEN: "#6a1b9a",
    State.FORCED_CLOSED: "#1565c0",
}


def state_badge(state: str) -> SafeString:
    label = State(state).label if state in State.values else state
    colour = STATE_COLOURS.get(State(state), "#555") if state in State.values else "#555"
    return format_html(
        '<span class="aio-state aio-state-{}" style="color:#fff;background:{};padding:1px 6px;'
        'border-radius:3px">{}</span>',
        state,
        colour,
        label,
    )


def percent(ratio: float) -> str:
    return f"{ratio:.0%}"


# What the list and the detail page both show of a circuit, in this order.
SUMMARY_FIELDS = (
    "client",
    "endpoint",
    "state_display",
    "processes_display",
    "failures",
    "successes",
    "failure_ratio_display",
    "changed_at",
)
DETAIL_FIELDS = (*SUMMARY_FIELDS, "reported_at", "override_detail", "processes_table", "transitions_table")


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Rows written by the publisher threads only: nobody adds, edits or deletes them by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BreakerStatus)
class CircuitBreakerAdmin(ReadOnlyAdmin):
    list_display = [*SUMMARY_FIELDS, "override_display", "reported_at"]
    list_display_links = ["client", "endpoint"]
    list_filter = ["client", "state", "override"]
    search_fields = ["client", "endpoint"]
    list_per_page = 200
    actions = ["force_open", "force_closed", "back_to_automatic"]
    fields = DETAIL_FIELDS
    readonly_fields = DETAIL_FIELDS

    @admin.display(description="state", ordering="state")
    def state_display(self, obj: BreakerStatus) -> SafeString:
        return state_badge(obj.state)

    @admin.display(description="processes", ordering="processes")
    def processes_display(self, obj: BreakerStatus) -> str:
        return obj.processes_summary()

    @admin.display(description="failure ratio", ordering="failure_ratio")
    def failure_ratio_display(self, obj: BreakerStatus) -> str:
        return percent(obj.failure_ratio)

    @admin.display(description="override", ordering="override")
    def override_display(self, obj: BreakerStatus) -> str:
        return Mode(obj.override).label if obj.override else "automatic"

    @admin.display(description="override")
    def override_detail(self, obj: BreakerStatus) -> str:
        row = BreakerOverride.objects.filter(client=obj.client, endpoint=obj.endpoint).select_related("changed_by")
        override = row.first()
        if override is None:
            return "automatic"
        by = override.changed_by.get_username() if override.changed_by else "unknown"
        return f"{override.get_mode_display()}, by {by} at {override.changed_at:%Y-%m-%d %H:%M:%S %Z}"

    @admin.display(description="reporting processes")
    def processes_table(self, obj: BreakerStatus) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (r.host, r.pid, state_badge(r.state), r.failures, r.successes, percent(r.failure_ratio),
                 _when(r.changed_at), _when(r.reported_at))
                for r in obj.reports().order_by("host", "pid")
            ),
        )  # fmt: skip
        head = "".join(
            f"<th>{h}</th>"
            for h in ("host", "pid", "state", "failures", "successes", "failure ratio", "changed", "reported")
        )
        return format_html('<table class="aio-processes"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
                           SafeString(head), rows)  # fmt: skip

    @admin.display(description=f"recent transitions (last {RECENT_TRANSITIONS})")
    def transitions_table(self, obj: BreakerStatus) -> SafeString:
        recent = obj.transitions().order_by("-at", "-id")[:RECENT_TRANSITIONS]
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((_when(t.at), t.host, t.pid, state_badge(t.from_state), state_badge(t.to_state),
              percent(t.failure_ratio)) for t in recent),
        )  # fmt: skip
        if not rows:
            return SafeString("none")
        head = "".join(f"<th>{h}</th>" for h in ("at", "host", "pid", "from", "to", "failure ratio"))
        return format_html('<table class="aio-transitions"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
                           SafeString(head), rows)  # fmt: skip

    # -- the actions: they need OVERRIDE_PERMISSION -----------------------------------------------

    def has_override_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OVERRIDE_PERMISSION)

    @admin.action(description="Force open (isolate)", permissions=["override"])
    def force_open(self, request: HttpRequest, queryset: QuerySet[BreakerStatus]) -> None:
        self._override(request, queryset, Mode.FORCE_OPEN)

    @admin.action(description="Force closed", permissions=["override"])
    def force_closed(self, request: HttpRequest, queryset: QuerySet[BreakerStatus]) -> None:
        self._override(request, queryset, Mode.FORCE_CLOSED)

    @admin.action(description="Back to automatic", permissions=["override"])
    def back_to_automatic(self, request: HttpRequest, queryset: QuerySet[BreakerStatus]) -> None:
        self._override(request, queryset, None)

    def _override(self, request: HttpRequest, queryset: QuerySet[BreakerStatus], mode: Mode | None) -> None:
        now = timezone.now()
        user = request.user if request.user.is_authenticated else None
        changed = 0
        for breaker in queryset:
            overrides = BreakerOverride.objects.filter(client=breaker.client, endpoint=breaker.endpoint)
            if mode is None:
                deleted, _ = overrides.delete()
                if not deleted:
                    continue
                message = "Back to automatic"
            else:
                BreakerOverride.objects.update_or_create(
                    client=breaker.client,
                    endpoint=breaker.endpoint,
                    defaults={"mode": mode, "changed_by": user, "changed_at": now},
                )
                message = f"Override: {mode.label}"
            self.log_change(request, breaker, message)
            changed += 1
        what = "back to automatic" if mode is None else mode.label
        noun = "circuit breaker" if changed == 1 else "circuit breakers"
        self.message_user(
            request,
            f"{changed} {noun} set {what}; every process obeys within a few seconds.",
            messages.SUCCESS,
        )


@admin.register(BreakerTransition)
class BreakerTransitionAdmin(ReadOnlyAdmin):
    list_display = [
        "at",
        "client",
        "endpoint",
        "host",
        "pid",
        "from_display",
        "to_display",
        "failure_ratio_display",
        "failures",
        "successes",
    ]
    list_filter = ["client", "to_state", "from_state", "at", "host"]
    search_fields = ["client", "endpoint", "host"]
    list_per_page = 200

    @admin.display(description="from", ordering="from_state")
    def from_display(self, obj: BreakerTransition) -> SafeString:
        return state_badge(obj.from_state)

    @admin.display(description="to", ordering="to_state")
    def to_display(self, obj: BreakerTransition) -> SafeString:
        return state_badge(obj.to_state)

    @admin.display(description="failure ratio", ordering="failure_ratio")
    def failure_ratio_display(self, obj: BreakerTransition) -> str:
        return percent(obj.failure_ratio)


@admin.register(BreakerOverride)
class BreakerOverrideAdmin(ReadOnlyAdmin):
    """What operators decided; set and lifted with the actions of "Circuit breakers"."""

    list_display = ["client", "endpoint", "mode", "changed_by", "changed_at"]
    list_filter = ["client", "mode"]
    list_select_related = ["changed_by"]


def _when(moment: datetime.datetime | None) -> str:
    if moment is None:
        return "never"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")

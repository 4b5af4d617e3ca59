"""Django admin: "Circuit breakers" (one row per client and endpoint, every process folded together),
their transitions, and the overrides operators set with the actions "Force open (isolate)",
"Force closed" and "Back to automatic" (permission ``django_aio_request.override_circuit_breaker``)."""

import contextvars
import datetime
from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from django_aio_request.breaker_words import ago, calls, duration, local, percent
from django_aio_request.breaker_words import state_note as state_note  # noqa: PLC0414 - still found here
from django_aio_request.models import (
    CHANGED_BY_LENGTH,
    COUNT_WINDOW,
    LOCAL_STORE,
    UNREACHABLE,
    BreakerOverride,
    BreakerStatus,
    BreakerTransition,
    Mode,
    State,
    breaker_id,
)

OVERRIDE_PERMISSION = "django_aio_request.override_circuit_breaker"
RECENT_TRANSITIONS = 50
# The detail page's buttons: (the value posted as "mode", the label), the same as the list's actions.
OVERRIDE_BUTTONS = (
    ("force_open", "Force open (isolate)"),
    ("force_closed", "Force closed"),
    ("automatic", "Back to automatic"),
)
# The request whose detail page is being drawn: readonly fields get only the object, and one admin
# instance serves every thread.
_drawing_for: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar("drawing_for", default=None)

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


def ago_short(moment: datetime.datetime | None) -> SafeString:
    """``"3 s ago"``, the time itself in the tooltip: the list's narrow columns."""
    if moment is None:
        return SafeString("never")
    return format_html('<span title="{}">{} ago</span>', _when(moment), duration(timezone.now() - moment))


# The list: the state calls get now first; narrow enough for 1280 px with the filters beside it.
LIST_FIELDS = (
    "state_display",
    "client_display",
    "processes_display",
    "calls_display",
    "changed_display",
    "seen_display",
)
DETAIL_FIELDS = (
    "state_display",
    "override_actions",
    "client",
    "endpoint",
    "override_detail",
    "processes_display",
    "calls_display",
    "changed_display",
    "seen_display",
    "processes_table",
    "transitions_table",
)
WINDOW_LABEL = f"calls, last {COUNT_WINDOW:.0f} s"
WRAP = "overflow-wrap:anywhere;word-break:break-word"


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Rows written by the publisher threads only: nobody adds, edits or deletes them by hand."""

    # No "Show counts" (Django 5's facets, absent from 4.2): they count every choice of every filter
    # as a column of one query, and the client and host filters list every value seen; past 1,664
    # clients (PostgreSQL's limit of a query's columns; SQLite's is 2,000) or hosts in the history
    # (a new pod name each deploy) the list answered 500 (a review).
    if hasattr(admin, "ShowFacets"):
        show_facets = admin.ShowFacets.NEVER

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BreakerStatus)
class CircuitBreakerAdmin(ReadOnlyAdmin):
    list_display = LIST_FIELDS
    list_display_links = ["client_display"]
    list_filter = ["client", "state", "override"]
    search_fields = ["client", "endpoint"]
    list_per_page = 200
    actions = ["force_open", "force_closed", "back_to_automatic"]
    fields = DETAIL_FIELDS
    readonly_fields = DETAIL_FIELDS

    @admin.display(description="state", ordering="state")
    def state_display(self, obj: BreakerStatus) -> SafeString:
        note = state_note(obj)
        if not note:
            return state_badge(obj.state)
        return format_html('{}<div class="aio-note" style="font-size:11px;color:#666;max-width:16em">{}</div>',
                           state_badge(obj.state), note)  # fmt: skip

    @admin.display(description="client, endpoint", ordering="client")
    def client_display(self, obj: BreakerStatus) -> SafeString:
        return format_html('{}<div class="aio-endpoint" style="{};font-size:11px;color:#666">{}</div>',
                           obj.client, WRAP, obj.endpoint)  # fmt: skip

    @admin.display(description="processes", ordering="processes")
    def processes_display(self, obj: BreakerStatus) -> str:
        return obj.processes_summary()

    @admin.display(description=WINDOW_LABEL, ordering="failure_ratio")
    def calls_display(self, obj: BreakerStatus) -> str:
        return calls(obj.failures, obj.successes, obj.rejected)

    @admin.display(description="changed", ordering="changed_at")
    def changed_display(self, obj: BreakerStatus) -> SafeString:
        return ago_short(obj.changed_at)

    @admin.display(description="last seen", ordering="reported_at")
    def seen_display(self, obj: BreakerStatus) -> SafeString:
        return ago_short(obj.reported_at)

    # The app list beside the page takes 300 px: without it the list fits 1280 px with its filters.
    WIDE = {"is_nav_sidebar_enabled": False}

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {**self.WIDE, **(extra_context or {})})

    @admin.display(description="override")
    def override_detail(self, obj: BreakerStatus) -> str:
        override = BreakerOverride.objects.filter(client=obj.client, endpoint=obj.endpoint).first()
        if override is None:
            return "automatic"
        return f"{override.get_mode_display()}, by {override.changed_by or 'unknown'} at {_when(override.changed_at)}"

    @admin.display(description="actions")
    def override_actions(self, obj: BreakerStatus) -> SafeString:
        """The list's actions for this one circuit: buttons of the page's form, posted to ``override/``."""
        request = _drawing_for.get()
        if request is None or not self.has_override_permission(request):
            return SafeString("you may not override circuit breakers")
        return format_html_join(
            " ",
            '<button type="submit" class="button" name="mode" value="{}" formaction="override/">{}</button>',
            ((mode, label) for mode, label in OVERRIDE_BUTTONS),
        )

    @admin.display(description="reporting processes")
    def processes_table(self, obj: BreakerStatus) -> SafeString:
        now = timezone.now()
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (r.host, r.pid, state_badge(r.state), calls(r.failures, r.successes, r.rejected),
                 f"{r.window_seconds:.0f} s", ago(r.changed_at, now), ago(r.reported_at, now),
                 counted_where(r.store))
                for r in obj.reports().order_by("host", "pid")
            ),
        )  # fmt: skip
        head = "".join(
            f"<th>{h}</th>"
            for h in ("host", "pid", "state", "calls", "over the last", "changed", "last seen", "breaker counts")
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

    # -- the detail page's buttons ---------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        own = [
            path(
                "<path:object_id>/change/override/",
                self.admin_site.admin_view(self.override_view),
                name="{}_{}_override".format(*info),
            )
        ]
        return own + super().get_urls()

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        token = _drawing_for.set(request)  # override_actions shows buttons only to those who may use them
        try:
            response = super().change_view(request, object_id, form_url, {**self.WIDE, **(extra_context or {})})
            if isinstance(response, TemplateResponse):
                response.render()  # now: the readonly fields are drawn as the template renders
            return response
        finally:
            _drawing_for.reset(token)

    def override_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        # Both, as for the list's actions (Django's changelist needs the view permission first): the
        # override permission alone forced circuits its holder could not see.
        if not (self.has_view_permission(request) and self.has_override_permission(request)):
            raise PermissionDenied
        modes = {"force_open": Mode.FORCE_OPEN, "force_closed": Mode.FORCE_CLOSED, "automatic": None}
        mode = request.POST.get("mode", "")
        if mode not in modes:
            return HttpResponseBadRequest(f"mode must be one of {', '.join(modes)}")
        info = self.opts.app_label, self.opts.model_name
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            # Its row went while the page was shown: no live process reports the circuit any more.
            # Said, and back to the list (a bare 404 before), as Django's change view does.
            self.message_user(request, GONE, messages.WARNING)
            return HttpResponseRedirect(reverse("admin:{}_{}_changelist".format(*info)))
        self._override(request, self.get_queryset(request).filter(pk=obj.pk), modes[mode])
        return HttpResponseRedirect(reverse("admin:{}_{}_change".format(*info), args=[quote(obj.pk)]))

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
        set_overrides(self, request, queryset, mode)


#: What an override of circuits no process reports any more says: their rows went while the page was shown.
GONE = (
    "Nothing was changed: no live process reports the circuit breakers selected any more (their rows went while"
    " the page was shown: their processes stopped, or have not reached the database for 5 s or more)."
    " Overrides apply to circuits processes report; those of circuits no process reports are on the overrides"
    " list."
)
#: The same for the overrides list, whose rows are overrides, not circuits processes report.
OVERRIDES_GONE = (
    "Nothing was changed: the overrides selected were lifted while the page was shown (by another operator,"
    " from a circuit's page or list, or by a script)."
)


def counted_where(store: str) -> str:
    """Where a process's breaker counts, from its report's ``store``."""
    if store == LOCAL_STORE:
        return "this process"
    if store.endswith(UNREACHABLE):
        return f"this process, until cache {store.removesuffix(UNREACHABLE)!r} answers"
    return f"shared in cache {store!r}"


def set_overrides(
    model_admin: admin.ModelAdmin,  # type: ignore[type-arg]
    request: HttpRequest,
    circuits: Iterable[BreakerStatus],
    mode: Mode | None,
    gone: str = GONE,
) -> None:
    """Set ``mode`` on each circuit (None: back to automatic), log it in admin's log against the circuit
    (its history, "Recent actions") and say how many changed; ``gone`` when none of those selected is left."""
    now = timezone.now()
    # The username as it is now, as text: the model has no foreign key to the user model (models.py).
    by = request.user.get_username()[:CHANGED_BY_LENGTH] if request.user.is_authenticated else ""
    changed = seen = 0
    for breaker in circuits:
        seen += 1
        overrides = BreakerOverride.objects.filter(client=breaker.client, endpoint=breaker.endpoint)
        if mode is None:
            deleted, _ = overrides.delete()
            if not deleted:
                continue
            message = "Back to automatic"
        else:
            _write_override(overrides, breaker.client, breaker.endpoint, mode=mode, changed_by=by, changed_at=now)
            message = f"Override: {mode.label}"
        model_admin.log_change(request, breaker, message)
        changed += 1
    if not seen:
        # The rows selected went while the page was shown (a green "0 circuit breakers set forced
        # open" before, though nothing was isolated).
        model_admin.message_user(request, gone, messages.WARNING)
        return
    what = "back to automatic" if mode is None else mode.label
    noun = "circuit breaker" if changed == 1 else "circuit breakers"
    left = seen - changed
    already = f" ({left} already {'was' if left == 1 else 'were'})" if left else ""
    model_admin.message_user(
        request,
        f"{changed} {noun} set {what}{already}; every process obeys within a few seconds.",
        messages.SUCCESS,
    )


def _write_override(overrides: QuerySet[BreakerOverride], client: str, endpoint: str, **fields: Any) -> None:
    """The override row of ``client`` and ``endpoint`` with ``fields``, written without reading it first.

    update_or_create() read the row and then wrote it in one transaction. On SQLite a transaction
    that has read cannot wait for another connection's write lock (the breaker publisher writes
    every second): it failed at once, "database is locked", whatever the busy timeout, and the
    admin answered 500 (2 of 377 actions of one operator, 20 of 151 with four). An UPDATE, or an
    INSERT when there was no row, waits for the lock as any write does. Two operators inserting the
    same row at once: the one that loses updates the row the other made.
    """
    if overrides.update(**fields):
        return
    try:
        with transaction.atomic(using=overrides.db):
            BreakerOverride.objects.using(overrides.db).create(client=client, endpoint=endpoint, **fields)
    except IntegrityError:
        overrides.update(**fields)


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
    """What operators decided; set and lifted with the actions of "Circuit breakers", and lifted here
    too: "Circuit breakers" has rows only for circuits a live process reports, so an override of a
    client renamed or removed, or whose processes are all down, can only be lifted here."""

    list_display = ["client", "endpoint", "mode_display", "changed_by_display", "changed_at"]
    list_filter = ["client", "mode"]
    actions = ["back_to_automatic"]

    def has_override_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OVERRIDE_PERMISSION)

    @admin.display(description="mode", ordering="mode")
    def mode_display(self, obj: BreakerOverride) -> str:
        """The mode's label, or the value as written where it is no mode (a script's ``FORCE_OPEN``,
        which every process ignores): Django shows a value outside a field's choices as "-"."""
        if obj.mode in Mode.values:
            return str(Mode(obj.mode).label)
        return f"{obj.mode!r}: no mode, ignored"

    @admin.display(description="changed by", ordering="changed_by")
    def changed_by_display(self, obj: BreakerOverride) -> str:
        return obj.changed_by or "unknown"

    @admin.action(description="Back to automatic", permissions=["override"])
    def back_to_automatic(self, request: HttpRequest, queryset: QuerySet[BreakerOverride]) -> None:
        # Logged against the circuit, as the actions of "Circuit breakers" are: its row may be gone.
        circuits = [
            BreakerStatus(pk=breaker_id(row.client, row.endpoint), client=row.client, endpoint=row.endpoint)
            for row in queryset
        ]
        set_overrides(self, request, circuits, None, gone=OVERRIDES_GONE)


def _when(moment: datetime.datetime | None) -> str:
    if moment is None:
        return "never"
    return f"{local(moment):%Y-%m-%d %H:%M:%S}"

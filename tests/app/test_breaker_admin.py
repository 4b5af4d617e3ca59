"""Admin "Circuit breakers": the folded table, filters, the detail page, the actions and who may use them;
and ``manage.py circuit_breakers``."""

import datetime
import io

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client as BrowserClient
from django.urls import reverse

from django_aio_request.models import BreakerOverride, BreakerReport, BreakerStatus, BreakerTransition, breaker_id

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)
BILLING = "http://billing:8080/"
CHANGELIST = "admin:django_aio_request_breakerstatus_changelist"


def report(
    client: str, endpoint: str, host: str, pid: int, state: str, *, failures: int = 0, successes: int = 0
) -> None:
    total = failures + successes
    BreakerReport.objects.create(
        client=client,
        endpoint=endpoint,
        host=host,
        pid=pid,
        state=state,
        failures=failures,
        successes=successes,
        failure_ratio=failures / total if total else 0.0,
        changed_at=NOW - datetime.timedelta(minutes=pid),
        reported_at=NOW,
    )


@pytest.fixture
def reports(db: None) -> None:
    report("billing", BILLING, "web-1", 101, "open", failures=6, successes=0)
    report("billing", BILLING, "web-1", 102, "open", failures=4, successes=1)
    report("billing", BILLING, "web-2", 201, "closed", failures=1, successes=8)
    report("orders", "http://orders:8080/", "web-1", 101, "closed", successes=3)
    BreakerTransition.objects.create(
        at=NOW, client="billing", endpoint=BILLING, host="web-1", pid=101, from_state="closed", to_state="open",
        failures=6, failure_ratio=1.0,
    )  # fmt: skip


def staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="django_aio_request",
                                                        codename__in=codenames))  # fmt: skip
    return user


VIEW = ("view_breakerstatus", "view_breakertransition", "view_breakeroverride")


@pytest.fixture
def operator(db: None) -> BrowserClient:
    browser = BrowserClient()
    browser.force_login(staff("operator", *VIEW, "override_circuit_breaker"))
    return browser


@pytest.fixture
def viewer(db: None) -> BrowserClient:
    browser = BrowserClient()
    browser.force_login(staff("viewer", *VIEW))
    return browser


def test_the_changelist_folds_every_process_into_one_row(reports: None, operator: BrowserClient) -> None:
    page = operator.get(reverse(CHANGELIST))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Circuit breakers" in html
    assert "3 processes: 2 open, 1 closed" in html
    assert "1 process: 1 closed" in html
    billing = BreakerStatus.objects.get(client="billing")
    assert (billing.state, billing.failures, billing.successes) == ("open", 11, 9)
    assert billing.failure_ratio == pytest.approx(11 / 20)
    assert "55%" in html
    assert billing.changed_at == NOW - datetime.timedelta(minutes=101)  # the latest change of any process
    for action in ("Force open (isolate)", "Force closed", "Back to automatic"):
        assert action in html


def test_filters_by_state_and_client(reports: None, operator: BrowserClient) -> None:
    page = operator.get(reverse(CHANGELIST), {"state__exact": "open"})
    assert [row.client for row in page.context["cl"].result_list] == ["billing"]
    page = operator.get(reverse(CHANGELIST), {"client": "orders"})
    assert [row.client for row in page.context["cl"].result_list] == ["orders"]
    assert "orders" in operator.get(reverse(CHANGELIST), {"q": "orders:8080"}).content.decode()


def test_the_detail_page_lists_each_process_and_the_transitions(reports: None, viewer: BrowserClient) -> None:
    url = reverse("admin:django_aio_request_breakerstatus_change", args=[quote(breaker_id("billing", BILLING))])
    page = viewer.get(url)
    assert page.status_code == 200
    html = page.content.decode().lower()
    for text in ("web-1", "web-2", "101", "102", "201", "reporting processes", "recent transitions", "automatic"):
        assert text in html
    assert html.count("aio-state-open") >= 3  # two processes open, and the transition to open


def test_actions_write_overrides_and_the_admin_log(reports: None, operator: BrowserClient) -> None:
    billing = breaker_id("billing", BILLING)
    page = operator.post(reverse(CHANGELIST), {"action": "force_closed", "_selected_action": [billing]}, follow=True)
    assert "1 circuit breaker set forced closed" in page.content.decode()
    override = BreakerOverride.objects.get()
    assert (override.client, override.endpoint, override.mode) == ("billing", BILLING, "force_closed")
    assert override.changed_by is not None
    assert override.changed_by.username == "operator"
    assert BreakerStatus.objects.get(client="billing").override == "force_closed"

    operator.post(reverse(CHANGELIST), {"action": "force_open", "_selected_action": [billing]})
    assert BreakerOverride.objects.get().mode == "force_open"
    operator.post(reverse(CHANGELIST), {"action": "back_to_automatic", "_selected_action": [billing]})
    assert not BreakerOverride.objects.exists()

    log = list(LogEntry.objects.order_by("id"))
    assert [entry.user.username for entry in log] == ["operator"] * 3
    assert [entry.object_repr for entry in log] == [f"billing {BILLING}"] * 3
    assert [entry.get_change_message() for entry in log] == [
        "Override: forced closed",
        "Override: forced open (isolated)",
        "Back to automatic",
    ]
    # The history shows the override on the detail page too.
    url = reverse("admin:django_aio_request_breakerstatus_change", args=[quote(billing)])
    assert "automatic" in operator.get(url).content.decode()


def test_staff_without_the_permission_see_everything_but_change_nothing(reports: None, viewer: BrowserClient) -> None:
    page = viewer.get(reverse(CHANGELIST))
    assert page.status_code == 200
    html = page.content.decode()
    assert "3 processes: 2 open, 1 closed" in html
    assert "Force closed" not in html
    assert 'name="action"' not in html
    billing = breaker_id("billing", BILLING)
    viewer.post(reverse(CHANGELIST), {"action": "force_closed", "_selected_action": [billing]})
    assert not BreakerOverride.objects.exists()
    assert not LogEntry.objects.exists()
    # Nobody adds or deletes rows by hand.
    assert viewer.get(reverse("admin:django_aio_request_breakerstatus_add")).status_code == 403
    assert viewer.get(reverse("admin:django_aio_request_breakertransition_changelist")).status_code == 200


def test_the_transitions_history_is_a_read_only_list_with_filters(reports: None, viewer: BrowserClient) -> None:
    url = reverse("admin:django_aio_request_breakertransition_changelist")
    page = viewer.get(url, {"to_state__exact": "open", "client": "billing"})
    assert page.status_code == 200
    assert len(page.context["cl"].result_list) == 1
    assert "web-1" in page.content.decode()
    assert len(viewer.get(url, {"to_state__exact": "closed"}).context["cl"].result_list) == 0


@pytest.mark.django_db
def test_hundreds_of_rows_load_in_a_bounded_number_of_queries(
    operator: BrowserClient, django_assert_max_num_queries: "pytest.FixtureDef[object]"
) -> None:
    BreakerReport.objects.bulk_create(
        BreakerReport(client=f"client-{n % 7}", endpoint=f"http://service-{n}:8080/", host=f"web-{pid}", pid=pid,
                      state=("open", "closed", "half_open")[(n + pid) % 3], failures=n % 5, successes=pid,
                      reported_at=NOW)
        for n in range(300) for pid in (1, 2)
    )  # fmt: skip
    with django_assert_max_num_queries(12):  # type: ignore[operator]
        page = operator.get(reverse(CHANGELIST))
    assert page.status_code == 200
    assert page.context["cl"].result_count == 300
    assert len(page.context["cl"].result_list) == 200  # a page


def test_the_management_command_prints_the_same_table(reports: None) -> None:
    out = io.StringIO()
    call_command("circuit_breakers", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "client", "endpoint", "state", "processes", "failures", "successes", "ratio", "last", "change", "override",
    ]  # fmt: skip
    assert len(lines) == 3
    assert lines[1].startswith("billing  http://billing:8080/  open")
    assert "3 processes: 2 open, 1 closed  11        9          55%" in lines[1]
    assert lines[1].endswith("automatic")
    assert lines[2].startswith("orders ")

    out = io.StringIO()
    call_command("circuit_breakers", "--state", "closed", stdout=out)
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["client", "orders"]


@pytest.mark.django_db
def test_the_management_command_without_reports() -> None:
    out = io.StringIO()
    call_command("circuit_breakers", stdout=out)
    assert "No circuit breaker has been reported" in out.getvalue()


@pytest.mark.django_db
def test_counts_shared_through_a_cache_are_counted_once() -> None:
    for pid in (1, 2):  # both processes see the same shared counts
        BreakerReport.objects.create(client="billing", endpoint=BILLING, host="web-1", pid=pid, state="open",
                                     failures=6, successes=2, reported_at=NOW, store="redis")  # fmt: skip
    report("billing", BILLING, "web-2", 3, "closed", failures=1, successes=1)  # a process counting on its own
    row = BreakerStatus.objects.get()
    assert (row.processes, row.failures, row.successes) == (3, 7, 3)
    assert row.failure_ratio == pytest.approx(0.7)

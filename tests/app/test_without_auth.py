"""The app in a project without django.contrib.auth (nor admin, nor contenttypes): a service-to-service
API has none. Before, ``BreakerOverride.changed_by`` was a foreign key to ``settings.AUTH_USER_MODEL``
and migration 0001 depended on the user model's app: ``manage.py check`` failed (fields.E300,
fields.E307: 'auth.User' is not installed), so did ``migrate``, and without the check 0001 stopped
with "Dependency on unknown app: auth". Who changed an override is now the username as text, which
the admin still records and shows when auth is there."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.test import Client as BrowserClient
from django.urls import reverse

from django_aio_request.models import BreakerOverride, BreakerReport, breaker_id
from tests.conf.test_settings_checks import ROOT

# Only the app: no auth, admin, contenttypes, sessions. The breakers share their counts through a
# cache every process reaches (a file cache: W003 warns that its counts may be lost, not an error).
NO_AUTH_PROJECT = """
SECRET_KEY = "not-a-secret"
INSTALLED_APPS = ["django_aio_request"]
MIDDLEWARE = ["django_aio_request.middleware.AioRequestMiddleware"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": %(database)r, "OPTIONS": {"timeout": 20}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "breakers": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": %(cache)r},
}
AIO_REQUEST = {
    "SERVICE_NAME": "orders",
    "CIRCUIT_BREAKER_STATE": "breakers",
    "CLIENTS": {
        "billing": {
            "ENDPOINT": %(endpoint)r,
            "TIMEOUT": 2.0,
            "CIRCUIT_BREAKER": {
                "BREAK_DURATION": 60.0,
                "SAMPLING_DURATION": 10.0,
                "MINIMUM_THROUGHPUT": 2,
                "FAILURE_THRESHOLD": 0.5,
            },
        },
    },
}
"""

# Process one: calls an endpoint nobody listens on until its breaker opens, flushes the counts and
# the open circuit to the cache, and publishes its report to the database.
OPENS = """
import json
import time

from django_aio_request import clients, get
from django_aio_request.breaker_publisher import publisher
from django_aio_request.models import BreakerReport

client = clients["billing"]
breaker = client.circuit_breaker
statuses = []
while str(breaker.state.get(client.endpoint, "closed")) != "open" and len(statuses) < 20:
    with client.request(get("invoices")) as response:
        statuses.append(response.status)
breaker.store.sync()
published = publisher.run_once()
row = BreakerReport.objects.get()
print(json.dumps({"statuses": statuses, "state": str(breaker.state.get(client.endpoint)), "published": published,
                  "report": [row.client, row.state, row.failures]}))
"""

# Process two: learns from the cache that the circuit is open, so that its first call gets the
# fallback without touching the network; then obeys an override written in the database (by nobody
# known: there are no users) and lists the circuits as ``manage.py circuit_breakers`` does.
OBEYS = """
import io
import json
import time

from django.core.management import call_command
from django.utils import timezone

from django_aio_request import clients, get
from django_aio_request.breaker_publisher import publisher
from django_aio_request.models import BreakerOverride

client = clients["billing"]
breaker = client.circuit_breaker
end = time.monotonic() + 10
while breaker.store.blocked_until(client.endpoint) is None and time.monotonic() < end:  # asks the cache
    breaker.store.sync()
    time.sleep(0.05)
learned = (breaker.store.blocked_until(client.endpoint) or 0) > time.time()
with client.request(get("invoices")) as response:
    fallback = [response.status, response.headers.get("X-Circuit-Breaker")]
BreakerOverride.objects.create(client="billing", endpoint=client.endpoint, mode="force_closed",
                               changed_at=timezone.now())
publisher.run_once()
listed = io.StringIO()
call_command("circuit_breakers", stdout=listed)
print(json.dumps({"learned": learned, "fallback": fallback, "forced": str(breaker.state.get(client.endpoint)),
                  "listed": listed.getvalue()}))
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``python <arguments>`` in a subprocess of the project in ``tmp_path``, from the repository's root."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "no_auth_settings",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
    }
    return subprocess.run(
        [sys.executable, *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False
    )


def script(tmp_path: Path, code: str) -> dict[str, Any]:
    done = run(tmp_path, "-c", "import django; django.setup()\n" + textwrap.dedent(code))
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture
def project(tmp_path: Path) -> Path:
    settings = NO_AUTH_PROJECT % {
        "database": str(tmp_path / "db.sqlite3"),
        "cache": str(tmp_path / "breakers"),
        "endpoint": f"http://127.0.0.1:{closed_port()}/",
    }
    (tmp_path / "no_auth_settings.py").write_text(settings)
    return tmp_path


def test_a_project_without_auth_checks_and_migrates(project: Path) -> None:
    check = run(project, "manage.py", "check")
    assert check.returncode == 0, check.stderr
    assert "fields.E3" not in check.stderr + check.stdout
    pending = run(project, "manage.py", "makemigrations", "--check", "--dry-run", "django_aio_request")
    assert pending.returncode == 0, pending.stdout + pending.stderr
    migrate = run(project, "manage.py", "migrate")
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "Applying django_aio_request.0005_breakeroverride_changed_by_username... OK" in migrate.stdout
    listed = run(project, "manage.py", "circuit_breakers")
    assert listed.returncode == 0, listed.stderr
    assert "No circuit breaker is reported now" in listed.stdout


def test_without_auth_breakers_share_through_the_cache_publish_and_obey_overrides(project: Path) -> None:
    assert run(project, "manage.py", "migrate").returncode == 0

    opened = script(project, OPENS)
    assert opened["state"] == "open"
    assert opened["published"] is True
    client, state, failures = opened["report"]
    assert (client, state) == ("billing", "open")
    assert failures >= 2  # MINIMUM_THROUGHPUT

    obeyed = script(project, OBEYS)
    assert obeyed["learned"] is True  # from the cache, before any call of its own
    assert obeyed["fallback"] == [502, "1"]  # its first call
    assert obeyed["forced"] == "forced_closed"
    listed = str(obeyed["listed"])
    assert "billing" in listed
    assert "forced closed" in listed


# With auth: the admin records who changed an override, and shows it.


@pytest.fixture
def operator(db: None) -> BrowserClient:
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_aio_request",
            codename__in=["view_breakerstatus", "view_breakeroverride", "override_circuit_breaker"],
        )
    )
    browser = BrowserClient()
    browser.force_login(user)
    return browser


def test_the_admin_records_and_shows_who_changed_an_override(operator: BrowserClient) -> None:
    endpoint = "http://billing:8080/"
    BreakerReport.objects.create(
        client="billing", endpoint=endpoint, host="web-1", pid=1, state="closed",
        reported_at="2999-01-01T00:00:00Z", expires_at="2999-01-01T00:00:00Z",
    )  # fmt: skip
    circuit = breaker_id("billing", endpoint)
    operator.post(
        reverse("admin:django_aio_request_breakerstatus_changelist"),
        {"action": "force_open", "_selected_action": [circuit]},
    )
    assert BreakerOverride.objects.get().changed_by == "operator"

    page = operator.get(reverse("admin:django_aio_request_breakerstatus_change", args=[quote(circuit)]))
    assert "forced open (isolated), by operator at" in page.content.decode()
    listed = operator.get(reverse("admin:django_aio_request_breakeroverride_changelist")).content.decode()
    assert '<td class="field-changed_by_display">operator</td>' in listed

    # The user renamed, or deleted: the override still says who it was then.
    User.objects.filter(username="operator").update(username="someone-else")
    page = operator.get(reverse("admin:django_aio_request_breakerstatus_change", args=[quote(circuit)]))
    assert "by operator at" in page.content.decode()

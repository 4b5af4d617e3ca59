"""The two sides of tests/test_breaker_cross_process.py, each a separate OS process sharing one database.

    python -m tests.support.breaker_registry_worker worker CLIENT SECONDS
    python -m tests.support.breaker_registry_worker operator USERNAME PASSWORD

Both run with ``DJANGO_SETTINGS_MODULE`` naming the test's settings module (its database file and
``AIO_REQUEST``).

``worker``: builds ``clients[CLIENT]`` through the registry, as application code does, so the
process's publisher thread runs; prints ``{"ready": ...}``, then calls ``GET fail`` every ~50 ms and
prints one JSON line per call (status, whether ``X-Circuit-Breaker`` was in the response, the
breaker's state after it, and ``time.time()`` when the call returned), until its stdin closes or
SECONDS have passed.

``operator``: a staff user with the override permission, created here, logs into admin through the
login form with CSRF checks on (as a browser does); then answers each command on stdin with one
JSON line: ``changelist`` (the rows of "Circuit breakers" as the page shows them), ``detail ID``
(that row's page), ``action NAME ID`` (runs the admin action NAME on the row ID by posting the
changelist's form, as a browser does). Every answer carries ``started`` and ``finished``
(``time.time()``). It exits when its stdin closes.
"""

import html
import json
import os
import re
import sys
import threading
import time
from typing import Any

ROW = re.compile(r"<tr[^>]*>(.*?)</tr>", re.S)
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def answer(data: object) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def setup() -> None:
    import django

    django.setup()


def worker(name: str, seconds: float) -> None:
    setup()
    from django_aio_request import clients, get
    from django_aio_request.breaker.circuit_breaker import DefaultCircuitBreaker
    from django_aio_request.breaker_publisher import publisher
    from django_aio_request.core.headers import X_CIRCUIT_BREAKER

    client = clients[name]  # through the registry: this starts the publisher thread
    breaker = client.circuit_breaker
    assert isinstance(breaker, DefaultCircuitBreaker)
    answer({"ready": True, "pid": os.getpid(), "publishing": publisher.running, "interval": publisher.interval})

    stdin_closed = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the test closed our stdin (or died)
        stdin_closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    end = time.monotonic() + seconds
    while not stdin_closed.is_set() and time.monotonic() < end:
        with client.request(get("fail")) as response:
            status, rejected = response.status, X_CIRCUIT_BREAKER in response.headers
        state = str(breaker.state.get(client.endpoint, "closed"))
        answer({"status": status, "breaker": rejected, "state": state, "t": time.time()})
        stdin_closed.wait(0.05)


def first(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.S)
    return html.unescape(found.group(1)).strip() if found else ""


def changelist_rows(page: str) -> list[dict[str, str]]:
    """The rows of the admin changelist table ``result_list``, as a person reads them."""
    if 'id="result_list"' not in page:
        return []  # no rows yet: admin shows no table
    table = page.split('id="result_list"', 1)[1].split("</table>", 1)[0]
    rows = []
    for row in ROW.findall(table.split("<tbody>", 1)[1]):

        def cell(field: str, row: str = row) -> str:
            found = re.search(rf'class="field-{field}[^"]*"[^>]*>(.*?)</t[dh]>', row, re.S)
            return html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip() if found else ""

        selected = re.search(r'name="_selected_action" value="([^"]*)"', row)
        badge = re.search(r'class="aio-state aio-state-([a-z_]+)"', row)
        rows.append(
            {
                "id": html.unescape(selected.group(1)) if selected else "",
                "client": first(r'class="field-client_display"[^>]*><a [^>]*>([^<]*)', row),
                "endpoint": first(r'class="aio-endpoint"[^>]*>(.*?)</div>', row),
                "state": badge.group(1) if badge else "",
                "processes": cell("processes_display"),
            }
        )
    return rows


def operator(username: str, password: str) -> None:
    setup()
    from django.contrib.admin.utils import quote
    from django.contrib.auth.models import Permission, User
    from django.test import Client as Browser
    from django.urls import reverse

    user = User.objects.create_user(username, password=password, is_staff=True)
    codenames = ("view_breakerstatus", "view_breakertransition", "view_breakeroverride", "override_circuit_breaker")
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_aio_request", codename__in=codenames)
    )
    browser = Browser(enforce_csrf_checks=True)
    login_url, changelist = reverse("admin:login"), reverse("admin:django_aio_request_breakerstatus_changelist")

    def token(page: Any) -> str:
        found = CSRF.search(page.content.decode())
        assert found, page.content.decode()[:2000]
        return found.group(1)

    login = browser.post(
        login_url,
        {"csrfmiddlewaretoken": token(browser.get(login_url)), "username": username, "password": password,
         "next": changelist},
    )  # fmt: skip
    assert login.status_code == 302, login.content.decode()[:2000]
    answer({"ready": True})

    for line in sys.stdin:
        command, _, rest = line.rstrip("\n").partition(" ")  # a row's id holds a space
        started = time.time()
        if command == "changelist":
            page = browser.get(changelist)
            assert page.status_code == 200, page.status_code
            answer({"rows": changelist_rows(page.content.decode()), "started": started, "finished": time.time()})
        elif command == "detail":
            page = browser.get(reverse("admin:django_aio_request_breakerstatus_change", args=[quote(rest)]))
            assert page.status_code == 200, page.status_code
            answer({"html": page.content.decode(), "started": started, "finished": time.time()})
        elif command == "action":
            action, _, selected = rest.partition(" ")
            form = browser.get(changelist)
            started = time.time()  # the action is sent now
            page = browser.post(
                changelist,
                {"csrfmiddlewaretoken": token(form), "action": action, "select_across": "0", "index": "0",
                 "_selected_action": [selected]},
                follow=True,
            )  # fmt: skip
            assert page.status_code == 200, page.status_code
            message = re.search(r'<ul class="messagelist">(.*?)</ul>', page.content.decode(), re.S)
            text = html.unescape(re.sub(r"<[^>]+>", "", message.group(1))).strip() if message else ""
            answer({"message": text, "started": started, "finished": time.time()})
        else:
            answer({"error": f"unknown command {command!r}"})


def main() -> None:
    role, *args = sys.argv[1:]
    if role == "worker":
        worker(args[0], float(args[1]))
    elif role == "operator":
        operator(args[0], args[1])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()

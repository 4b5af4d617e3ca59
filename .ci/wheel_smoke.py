"""Smoke test of the built wheel, run by .ci/wheel_smoke.sh with the fresh virtualenv's Python.

    python wheel_smoke.py CHECKOUT WHEEL

1. The wheel holds every file of the package in the checkout (modules, migrations, py.typed and
   any templates or static files), requires Django and registers the pytest plugin.
2. ``import django_aio_request`` loads the installed copy, not the checkout.
3. A new Django project using it (written to a temporary directory): ``manage.py check`` and
   ``manage.py migrate`` pass, and a view called through Django's test client with
   ``X-Request-Timeout: 2`` and ``X-Request-Priority: high`` calls a named client, sync and async,
   to a loopback server, which receives the deadline, the priority and the service name; a
   user's pytest test uses the ``aio_request`` fixture of the installed plugin.
4. A large gzip-encoded answer (4 MB of CSV text) comes back whole through the client, with the
   dependencies installed (the lowest allowed: urllib3 2.0.0 and 2.0.1, yanked, cut such bodies at
   a multiple of 64 KiB and answered 200).
5. A compressed answer that expands past ``MAX_RESPONSE_SIZE`` is refused (489) without being
   expanded in memory: an 800-byte body encoded ``gzip, gzip`` that expands to 256 MiB, against a
   limit of 1 MiB, may take at most 32 MiB at its peak (below urllib3 2.6.0, which pyproject.toml
   allowed before, such a body took 814 MiB).
Any failure exits non-zero with a message saying what was wrong.
"""

import gzip
import http.server
import importlib.metadata
import json
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import tracemalloc
import zipfile
from pathlib import Path

PACKAGE = "django_aio_request"


def fail(message: str) -> None:
    sys.exit(f"wheel smoke test FAILED: {message}")


def check_contents(checkout: Path, wheel: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", PACKAGE],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    expected = {name for name in tracked if "__pycache__" not in name}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
        entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        plugins = archive.read(entry_points).decode() if entry_points else ""
        # Byte for byte the checkout's: a stale build/lib once put old copies of 16 modules into a
        # wheel built from a source archive (every file with the same time, so setuptools kept them).
        stale = sorted(n for n in expected & names if archive.read(n) != (checkout / n).read_bytes())
    missing = sorted(expected - names)
    if missing:
        fail(f"files of the package missing from the wheel: {missing}")
    if stale:
        fail(f"files of the wheel that are not the checkout's: {stale}")
    for needed in (f"{PACKAGE}/py.typed", f"{PACKAGE}/migrations/0001_circuit_breakers.py"):
        if needed not in names:
            fail(f"{needed} is not in the wheel")
    if not any(line.split(":", 1)[1].strip().lower().startswith("django") for line in requires):
        fail(f"the wheel does not require Django: {requires}")
    if "[pytest11]" not in plugins or "django_aio_request.pytest_plugin" not in plugins:
        fail(f"the pytest plugin entry point is missing: {plugins!r}")
    print(f"wheel: {len(names)} files, every one of the package's {len(expected)}; requires {len(requires)}")


def check_installed_copy(checkout: Path) -> None:
    import django_aio_request

    location = Path(django_aio_request.__file__).resolve()
    if checkout.resolve() in location.parents:
        fail(f"django_aio_request was imported from the checkout ({location}), not the installed wheel")
    print(f"installed: {location.parent} (version {importlib.metadata.version('django-aio-request')})")


class Downstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received: list[dict[str, str]] = []

    coded = b""  # what /data.csv answers, gzip-encoded (check_large_gzip_body)
    bomb = b""  # what /bomb answers, encoded "gzip, gzip" (check_compressed_bomb)

    def do_GET(self) -> None:
        Downstream.received.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        if self.path == "/bomb":
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip, gzip")
            self.send_header("Content-Length", str(len(Downstream.bomb)))
            self.end_headers()
            self.wfile.write(Downstream.bomb)
            return
        if self.path == "/data.csv":
            body, content_type = Downstream.coded, "text/csv"
        else:
            body, content_type = json.dumps({"invoice": self.path}).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if body is Downstream.coded:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


SETTINGS = """
SECRET_KEY = "smoke"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_aio_request",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_aio_request.middleware.AioRequestMiddleware",
]
TEMPLATES = [{{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {{"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]}},
}}]
ROOT_URLCONF = "smoke.urls"
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"
AIO_REQUEST = {{
    "SERVICE_NAME": "smoke",
    "CLIENTS": {{"billing": {{"ENDPOINT": "{endpoint}", "TIMEOUT": 5.0}}}},
}}
"""

URLS = """
from django.http import JsonResponse
from django.urls import path

from django_aio_request import clients, get


def invoice(request, pk):
    with clients["billing"].request(get("invoices/{id}", path_parameters={"id": pk})) as response:
        return JsonResponse({"status": response.status, "body": response.json()})


async def ainvoice(request, pk):
    async with clients["billing"].arequest(get("invoices/{id}", path_parameters={"id": pk})) as response:
        return JsonResponse({"status": response.status, "body": response.json()})


urlpatterns = [path("invoice/<int:pk>/", invoice), path("ainvoice/<int:pk>/", ainvoice)]
"""

USERS_TEST = """
from django_aio_request import Priority
from django_aio_request.testing import reply


def test_a_view_against_the_fake(client, aio_request):
    billing = aio_request.fake("billing")
    billing.route("invoices/{id}", reply(200, json={"id": 3}))
    answer = client.get("/invoice/3/", headers=aio_request.headers(timeout=1.5, priority="low"))
    assert answer.json() == {"status": 200, "body": {"id": 3}}
    [call] = billing.calls
    assert call.priority is Priority.LOW
    assert 1.0 < call.timeout <= 1.5
"""

CALLS = """
import asyncio, json
from django.test import AsyncClient, Client
headers = {"X-Request-Timeout": "2", "X-Request-Priority": "high"}
sync = Client().get("/invoice/7/", headers=headers)
async def call():
    return await AsyncClient().get("/ainvoice/8/", headers=headers)
print(json.dumps([sync.status_code, sync.json(), asyncio.run(call()).json()]))
"""


def run(project: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=project, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        fail(f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def check_project() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Downstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/"
    with tempfile.TemporaryDirectory() as directory:
        project = Path(directory)
        (project / "smoke").mkdir()
        (project / "smoke" / "__init__.py").write_text("")
        (project / "smoke" / "settings.py").write_text(SETTINGS.format(endpoint=endpoint))
        (project / "smoke" / "urls.py").write_text(URLS)
        (project / "manage.py").write_text(
            textwrap.dedent("""
                import os, sys
                from django.core.management import execute_from_command_line
                os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smoke.settings")
                execute_from_command_line(sys.argv)
            """)
        )
        print(run(project, "check").strip())
        migrated = run(project, "migrate", "--no-input")
        if "Applying django_aio_request.0001" not in migrated:
            fail(f"manage.py migrate did not apply the app's migrations:\n{migrated}")
        print("migrate: the app's migrations applied")
        status, sync_body, async_body = json.loads(run(project, "shell", "-c", CALLS).strip().splitlines()[-1])
        (project / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = smoke.settings\n")
        (project / "test_users.py").write_text(USERS_TEST)
        tested = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if tested.returncode != 0:
            fail(f"a user's test with the aio_request fixture failed:\n{tested.stdout}\n{tested.stderr}")
        print("pytest: the aio_request fixture of the installed plugin works in a user's test")
    server.shutdown()
    if status != 200 or sync_body != {"status": 200, "body": {"invoice": "/invoices/7"}}:
        fail(f"the sync view answered {status} {sync_body}")
    if async_body != {"status": 200, "body": {"invoice": "/invoices/8"}}:
        fail(f"the async view answered {async_body}")
    if len(Downstream.received) != 2:
        fail(f"the downstream received {len(Downstream.received)} requests, not 2")
    for received in Downstream.received:
        timeout = float(received.get("x-request-timeout", "nan"))
        if not 1.0 < timeout <= 2.0 or received.get("x-request-priority") != "high":
            fail(f"the downstream did not get the deadline and priority: {received}")
        if received.get("x-service-name") != "smoke":
            fail(f"the downstream did not get X-Service-Name: {received}")
    print("calls: sync and async views reached the downstream with the deadline, priority and service name")


def check_large_gzip_body() -> None:
    import django_aio_request

    rows = random.Random(1)
    body = "".join(f"{n},{rows.randint(1, 999)},{rows.random():.4f}\n" for n in range(200_000)).encode()
    Downstream.coded = coded = gzip.compress(body)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Downstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = django_aio_request.setup(endpoint=f"http://127.0.0.1:{server.server_address[1]}/", metrics=False)
    try:
        with client.request(django_aio_request.get("data.csv")) as response:
            got = response.read()
    finally:
        client.close()
        server.shutdown()
    if response.status != 200 or got != body:
        fail(f"a gzip-encoded answer of {len(body)} bytes came back as {response.status} with {len(got)} bytes")
    print(f"a gzip-encoded answer of {len(body)} bytes ({len(coded)} coded) came back whole")


def check_compressed_bomb() -> None:
    import django_aio_request

    expands_to = 256 * 1024 * 1024
    Downstream.bomb = gzip.compress(gzip.compress(b"\0" * expands_to))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Downstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = django_aio_request.setup(
        endpoint=f"http://127.0.0.1:{server.server_address[1]}/",
        transport=django_aio_request.RequestsTransport(max_response_size=1024 * 1024),
        safe_method_strategy=django_aio_request.single_attempt_strategy(),
        metrics=False,
    )
    tracemalloc.start()
    try:
        with client.request(django_aio_request.get("bomb")) as response:
            status = response.status
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        client.close()
        server.shutdown()
    if status != 489 or peak > 32 * 1024 * 1024:
        fail(
            f"a {len(Downstream.bomb)}-byte answer encoded 'gzip, gzip' that expands to {expands_to} bytes, against a"
            f" limit of 1 MiB, came back as {status} and took {peak / 2**20:.1f} MiB at its peak"
        )
    print(f"a compressed answer expanding past the limit was refused ({status}) at a peak of {peak / 2**20:.1f} MiB")


def main() -> None:
    checkout, wheel = Path(sys.argv[1]), Path(sys.argv[2])
    check_contents(checkout, wheel)
    check_installed_copy(checkout)
    check_project()
    check_large_gzip_body()
    check_compressed_bomb()
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()

"""A call made while serving a request ends by the earlier of the request's deadline and the
client's TIMEOUT (through AioRequestMiddleware, to a loopback downstream)."""

import time
from typing import Any

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from django_aio_request.testing import request_headers
from tests.support.loopback import LoopbackServer, hang_until_disconnect

pytestmark = pytest.mark.urls("tests.support.urls_app")


@pytest.fixture
def downstream(server: LoopbackServer, settings: Settings) -> LoopbackServer:
    settings.MIDDLEWARE = ["django_aio_request.middleware.AioRequestMiddleware"]
    single = {"NAME": "single"}
    settings.AIO_REQUEST = {
        "SERVICE_NAME": "tests",
        "TIMEOUT": 20.0,  # the server's default deadline for a request without X-Request-Timeout
        "CLIENTS": {
            "capped": {"ENDPOINT": server.url, "TIMEOUT": 0.5, "SAFE_METHOD_STRATEGY": single},
            "billing": {"ENDPOINT": server.url, "TIMEOUT": 5.0, "SAFE_METHOD_STRATEGY": single},
        },
    }
    server.route("/invoices/*", hang_until_disconnect)
    return server


def view(path: str, headers: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    answer = Client().get(path, headers=headers or {})
    assert answer.status_code == 200
    return answer.json(), time.monotonic() - started


def sent_timeout(server: LoopbackServer) -> float:
    return float(server.received()[-1].headers["X-Request-Timeout"])


@pytest.mark.parametrize("incoming", [request_headers(timeout=2), {}], ids=["header-2s", "server-default-20s"])
def test_client_timeout_caps_a_longer_request_deadline(downstream: LoopbackServer, incoming: dict[str, str]) -> None:
    data, elapsed = view("/invoice/1/?client=capped", incoming)

    assert data["status"] == 408
    assert 0.45 < data["elapsed"] < 0.9
    assert elapsed < 1.5
    assert sent_timeout(downstream) <= 0.5


def test_a_shorter_request_deadline_caps_the_client_timeout(downstream: LoopbackServer) -> None:
    data, _ = view("/invoice/2/?client=billing", request_headers(timeout=0.4))

    assert data["status"] == 408
    assert 0.3 < data["elapsed"] < 0.8
    assert sent_timeout(downstream) <= 0.4


def test_the_priority_still_comes_from_the_request(downstream: LoopbackServer) -> None:
    downstream.route("/invoices/3", lambda h: h.reply(200, b"ok"))

    data, _ = view("/invoice/3/?client=capped", request_headers(timeout=2, priority="high"))

    assert data["status"] == 200
    received = downstream.received("/invoices/3")[0]
    assert received.headers["X-Request-Priority"] == "high"
    assert 0.3 < float(received.headers["X-Request-Timeout"]) <= 0.5

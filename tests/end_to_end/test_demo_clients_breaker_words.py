"""The Clients page (testproject/describe.py) on an answer of hedged's circuit breaker: what it says
is true of a circuit forced open in admin, which never probes, as of one that opened by itself."""

import html
import re
from collections.abc import Iterator
from typing import Any, cast

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from django_aio_request.testing import force_breaker
from testproject import describe
from testproject.views import INDEX_CLIENTS
from tests.support.loopback import LoopbackServer

FORCED_OPEN = "forced open in admin, it never probes: no call goes out until the override is lifted there"
OPEN = "open by itself, it lets one attempt through now and then, to probe"


def _rows(page: str) -> dict[str, list[str]]:
    """The Clients page's table: client -> its cells as text."""
    table = page.split('<table id="results">', 1)[1].split("</table>", 1)[0]
    cells = [
        [html.unescape(re.sub(r"<[^>]+>", " ", cell)).split() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)
    ]
    return {row[0][0]: [" ".join(cell) for cell in row] for row in cells if row}


@pytest.fixture
def billing(settings: Settings) -> Iterator[LoopbackServer]:
    """Billing's simulated service on a loopback server, and the demo frontend's clients of the page
    (settings/demo_frontend.py: hedged has the circuit breaker) calling it."""
    from settings.demo_frontend import AIO_REQUEST

    server = LoopbackServer()
    server.route("/demo/downstream/*", lambda h: h.reply_json({"name": "42", "slept": 0, "received": {}}))
    settings.DEMO_PAGES = True
    configured = cast("dict[str, dict[str, Any]]", AIO_REQUEST["CLIENTS"])
    settings.AIO_REQUEST = {
        "CLIENTS": {alias: {**configured[alias], "ENDPOINT": server.url + "demo/"} for alias in INDEX_CLIENTS}
    }
    try:
        yield server
    finally:
        server.close()


def test_a_circuit_forced_open_is_not_said_to_probe(client: Client, billing: LoopbackServer) -> None:
    """Under "Force open" in admin the page said "the circuit breaker answered (it lets one attempt
    through now and then, to probe)": a forced-open circuit never probes (a review)."""
    with force_breaker("hedged", "open"):
        response = client.get("/")
    assert response.status_code == 200
    hedged = _rows(response.content.decode())["hedged"]
    status, breaker, said = hedged[3], hedged[5], hedged[6]
    assert (status, breaker) == ("502", "forced open"), hedged
    assert FORCED_OPEN in said, said
    assert said == f"no answer from billing: the circuit breaker answered: {FORCED_OPEN}", said
    assert len(billing.received()) == 2  # single's and sequential's calls; none of hedged's went out


@pytest.mark.parametrize(
    ("state", "said"),
    [("forced_open", FORCED_OPEN), ("forced open", FORCED_OPEN), ("open", OPEN), ("half open", OPEN)],
)
def test_an_answer_of_the_breaker_is_said_as_what_its_state_does(state: str, said: str) -> None:
    text = describe.received(None, 502, True, state)
    assert text == f"no answer from billing: the circuit breaker answered: {said}"
    if state.startswith("forced"):
        assert "lets one attempt" not in text

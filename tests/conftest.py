import sys
from collections.abc import Callable, Iterator

import pytest

from django_aio_request import Client, RequestsTransport
from tests.support import postgres
from tests.support.loopback import LoopbackServer, clients

_ports_used: set[int] = set()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    """A real HTTP server on loopback, new for each test, on a port no earlier test's server had.

    Metrics are labelled by endpoint and live for the whole process: a port reused by the OS would
    let one test see another's series.
    """
    srv = LoopbackServer()
    held = []
    while srv.port in _ports_used:
        held.append(srv)  # keep it open so the OS cannot hand out the same port again at once
        srv = LoopbackServer()
    for old in held:
        old.close()
    _ports_used.add(srv.port)
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _switch_interval() -> Iterator[None]:
    """Load shedding sets the interpreter's switch interval (SHEDDING["SWITCH_INTERVAL"]): each test
    starts from the interpreter's own, and what one test's limiter set does not leak into the next."""
    interval = sys.getswitchinterval()
    yield
    sys.setswitchinterval(interval)


@pytest.fixture
def make_client(server: LoopbackServer) -> Iterator[Callable[..., Client]]:
    """Builds clients (``django_aio_request.setup`` keywords) for the test's ``server``; closes them after."""
    with clients(server.url) as make:
        yield make


@pytest.fixture
def transport() -> Iterator[RequestsTransport]:
    """A default transport, closed after the test."""
    made = RequestsTransport()
    yield made
    made.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    postgres.collection_modifyitems(items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    postgres.runtest_setup(item)

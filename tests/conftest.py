from collections.abc import Iterator

import pytest

from django_aio_request import RequestsTransport
from tests import postgres
from tests.loopback import LoopbackServer


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    """A real HTTP server on loopback, new for each test."""
    srv = LoopbackServer()
    yield srv
    srv.close()


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

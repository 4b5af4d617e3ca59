from collections.abc import Iterator

import pytest

from tests.loopback import LoopbackServer


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    """A real HTTP server on loopback, new for each test."""
    srv = LoopbackServer()
    yield srv
    srv.close()

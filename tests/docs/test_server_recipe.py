"""docs/server.md's recipe "the remaining deadline as a requests timeout", run as the page writes it
(its code up to the call it makes, which needs a partner service)."""

import re
from pathlib import Path
from typing import Any

import pytest

from django_aio_request import Deadline, set_context

PAGE = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def recipe() -> dict[str, Any]:
    text = PAGE.read_text()
    section = text[text.index("### Recipe: the remaining deadline as a `requests` timeout") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    code = found.group(1)
    namespace: dict[str, Any] = {}
    exec(code[: code.index("left = time_left()")], namespace)  # the page's own code
    return namespace


def test_time_left_gives_what_is_left_and_refuses_when_nothing_useful_is() -> None:
    time_left = recipe()["time_left"]
    assert time_left() == 10.0  # outside a request: the default
    with set_context(deadline=Deadline.from_timeout(5)):
        assert 4.5 < time_left() <= 5
    with set_context(deadline=Deadline.from_timeout(0.001)), pytest.raises(TimeoutError):
        time_left()

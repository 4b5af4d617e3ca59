"""The deadline and priority of the work being done, carried in a contextvar."""

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

from .deadline import Deadline
from .priority import Priority


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    deadline: Deadline | None = None
    priority: Priority | None = None


_context: contextvars.ContextVar[Context] = contextvars.ContextVar("django_aio_request_context", default=Context())  # noqa: B039 - frozen

_KEEP: object = object()


def get_context() -> Context:
    """The deadline and priority in force here (each None when nothing set it)."""
    return _context.get()


@contextlib.contextmanager
def set_context(
    *, deadline: Deadline | object | None = _KEEP, priority: Priority | object | None = _KEEP
) -> Iterator[Context]:
    """Set the deadline and/or priority for the block; an argument left out keeps the outer value."""
    if not (deadline is _KEEP or deadline is None or isinstance(deadline, Deadline)):
        raise TypeError(f"deadline must be a Deadline or None, not {type(deadline).__name__}")
    if not (priority is _KEEP or priority is None or isinstance(priority, Priority)):
        raise TypeError(f"priority must be a Priority or None, not {priority!r}; use Priority.parse() for text")
    outer = _context.get()
    new = Context(
        deadline=outer.deadline if deadline is _KEEP else deadline,  # type: ignore[arg-type]
        priority=outer.priority if priority is _KEEP else priority,  # type: ignore[arg-type]
    )
    token = _context.set(new)
    try:
        yield new
    finally:
        _context.reset(token)

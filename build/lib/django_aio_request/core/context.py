"""The deadline and priority of the work being done, carried in a contextvar."""

import contextlib
import contextvars
from collections.abc import Iterator

from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority


class Context:
    """A deadline and a priority. Immutable: hedging workers and async tasks share one instance.

    Not a frozen dataclass: its ``__init__`` sets fields through ``object.__setattr__``, which cost
    about 1 µs per request inside Django (AioRequestMiddleware builds one per request).
    """

    __slots__ = ("_deadline", "_priority")

    def __init__(self, deadline: Deadline | None = None, priority: Priority | None = None) -> None:
        self._deadline = deadline
        self._priority = priority

    @property
    def deadline(self) -> Deadline | None:
        return self._deadline

    @property
    def priority(self) -> Priority | None:
        return self._priority

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Context):
            return NotImplemented
        return (self._deadline, self._priority) == (other._deadline, other._priority)

    def __hash__(self) -> int:
        return hash((self._deadline, self._priority))

    def __repr__(self) -> str:
        return f"Context(deadline={self._deadline!r}, priority={self._priority!r})"


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

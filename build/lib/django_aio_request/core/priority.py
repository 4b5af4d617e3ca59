import enum


class Priority(enum.StrEnum):
    """Priority of a call, sent as ``X-Request-Priority`` in lower case."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @classmethod
    def parse(cls, value: str | None) -> "Priority | None":
        """The priority named by ``value`` in any case, or None when it names none."""
        if value is None:
            return None
        try:
            return cls(value.strip().lower())
        except ValueError:
            return None

    def within(self, outer: "Priority | None") -> "Priority":
        """This priority asked for inside a call of priority ``outer``.

        As aio-request does: a low call made while serving a high-priority request is
        raised to normal, and a high call made while serving a low one is lowered to normal.
        """
        if outer is Priority.HIGH and self is Priority.LOW:
            return Priority.NORMAL
        if outer is Priority.LOW and self is Priority.HIGH:
            return Priority.NORMAL
        return self

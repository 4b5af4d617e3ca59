"""A validating reader for nested settings: each field reader returns a value or records a :class:`Problem`.

Reading goes on after a problem, so one pass reports every problem at once (``manage.py check``
shows them all). Nothing here knows the keys of ``AIO_REQUEST``: ``schema.py`` does.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from django_aio_request.core.priority import Priority

SETTING = "AIO_REQUEST"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the setting: where (``path``), what, and what is allowed."""

    path: str
    message: str
    hint: str | None = None
    warning: bool = False

    def __str__(self) -> str:
        text = f"{SETTING}{self.path} {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class Reader:
    """Collects problems while reading; each method returns a value, or None after recording why not."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(path, message, hint))

    def mapping(self, path: str, value: Any, allowed: tuple[str, ...] | None) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a dict, not {type(value).__name__}")
            return None
        for key in value:
            if allowed is not None and key not in allowed:
                self.fail(f"{path}[{key!r}]", "is not a known key", "allowed keys: " + ", ".join(allowed))
        return value

    def named(self, path: str, value: Any, names: tuple[str, ...]) -> str | None:
        name = value.get("NAME") if isinstance(value, Mapping) else None
        if name not in names:
            self.fail(f"{path}['NAME']", f"is {name!r}, not a known name", "allowed: " + ", ".join(names))
            return None
        return str(name)


# Each field reader takes (reader, path, value) and returns the value or None (a problem recorded).
Field = Callable[[Reader, str, Any], Any]


def number(
    minimum: float,
    *,
    inclusive: bool = True,
    below: float | None = None,
    at_most: float | None = None,
    what: str = "a number",
) -> Field:
    def read(reader: Reader, path: str, value: Any) -> float | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= minimum if inclusive else value > minimum)
        ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
        if not ok:
            bounds = f">= {minimum}" if inclusive else f"> {minimum}"
            bounds += f" and < {below}" if below is not None else ""
            bounds += f" and <= {at_most}" if at_most is not None else ""
            reader.fail(path, f"must be {what} {bounds}, not {value!r}")
            return None
        return float(value)

    return read


def integer(minimum: int) -> Field:
    def read(reader: Reader, path: str, value: Any) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            reader.fail(path, f"must be a whole number >= {minimum}, not {value!r}")
            return None
        return value

    return read


def boolean(reader: Reader, path: str, value: Any) -> bool | None:
    if not isinstance(value, bool):
        reader.fail(path, f"must be True or False, not {value!r}")
        return None
    return value


def optional(field: Field) -> Field:
    """``field``, or None (no limit) when the value is None."""
    return lambda reader, path, value: None if value is None else field(reader, path, value)


def priority(reader: Reader, path: str, value: Any) -> Priority | None:
    parsed = Priority.parse(value) if isinstance(value, str) else None
    if parsed is None:
        reader.fail(path, f"is {value!r}, not a priority", "allowed: " + ", ".join(p.value for p in Priority))
    return parsed


def names(reader: Reader, path: str, value: Any) -> frozenset[str] | None:
    """A list of non-empty names, returned lower-cased."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        reader.fail(path, f"must be a list of names, not {type(value).__name__}")
        return None
    bad = [name for name in value if not isinstance(name, str) or not name.strip()]
    if bad:
        reader.fail(path, f"must hold non-empty strings only, not {bad[0]!r}")
        return None
    return frozenset(name.strip().lower() for name in value)


def dotted(what: str, accept: Callable[[Any], bool]) -> Field:
    def read(reader: Reader, path: str, value: Any) -> Any:
        from django.utils.module_loading import import_string

        if not isinstance(value, str):
            reader.fail(path, f"must be the dotted path of {what}, not {type(value).__name__}")
            return None
        try:
            found = import_string(value)
        except ImportError as error:
            reader.fail(path, f"cannot be imported: {error}", f"give the dotted path of {what}")
            return None
        if not accept(found):
            reader.fail(path, f"names {found!r}, not {what}")
            return None
        return found

    return read


def fields(
    reader: Reader, path: str, spec: Mapping[str, Any], schema: Mapping[str, tuple[Field, Any]]
) -> dict[str, Any]:
    """Read every key of ``schema`` (``KEY: (field, default)``) from ``spec``; missing keys take the default."""
    return {key: read(reader, f"{path}[{key!r}]", spec[key]) if key in spec else default
            for key, (read, default) in schema.items()}  # fmt: skip


SECONDS = number(0, inclusive=False, what="a number of seconds")

"""A validating reader for nested settings: each field reader returns a value or records a :class:`Problem`.

Reading goes on after a problem, so one pass reports every problem at once (``manage.py check``
shows them all). Nothing here knows the keys of ``AIO_REQUEST``: ``schema.py`` does.
"""

import dataclasses
import difflib
import math
import numbers
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, cast

from django_aio_request.core.client_setup import error_text, shown_endpoint
from django_aio_request.core.headers import service_name
from django_aio_request.core.priority import Priority

SETTING = "AIO_REQUEST"

# The kinds of problem: ``manage.py check`` shows each as ``django_aio_request.<code>`` (docs/usage.md
# lists them). Errors E001-E0xx, warnings W001-W009 (W010 onwards: checks.py's checks of other settings).
UNKNOWN_KEY = "E001"  # a misspelt or misplaced key
WRONG_TYPE = "E002"  # a dict, list, string or True/False expected, something else given
BAD_NUMBER = "E003"  # not a number, or out of its range (negative timeout, ratio above 1, ...)
BAD_ENDPOINT = "E004"  # ENDPOINT missing, not an absolute http(s) URL, credentials, bad port, white space
UNKNOWN_NAME = "E005"  # an unknown strategy, delays or deadline provider NAME
UNKNOWN_CACHE = "E006"  # CIRCUIT_BREAKER_STATE names no cache of settings.CACHES
UNKNOWN_PRIORITY = "E007"  # not high, normal or low (or "lower" for HEDGE_PRIORITY)
BAD_IMPORT = "E008"  # a dotted path that cannot be imported, or names the wrong kind of object
CONFLICT = "E009"  # values that contradict each other (TIMEOUT above MAX_TIMEOUT, ...)
MISSING_KEY = "E010"  # a required key is absent (a repeated STRATEGY)
NO_TRAILING_SLASH = "W001"  # an ENDPOINT whose path does not end with "/"
PER_PROCESS_CACHE = "W002"  # breaker counts in a cache each process keeps apart
LOSSY_CACHE = "W003"  # breaker counts in a shared cache whose add or incr is not atomic (files, database)
SHORT_SHARED_SAMPLING = "W004"  # a shared breaker's SAMPLING_DURATION too short for other processes' counts to count
LARGE_BUDGET = "W005"  # a RETRY_BUDGET RATIO above 1: more extra attempts than first ones (20 meant as 20%?)
UNEXPECTED = "E099"  # reading failed in a way this reader did not foresee (checks.py reports it; a bug of ours)
CODES = {
    UNKNOWN_KEY: "unknown key",
    WRONG_TYPE: "wrong type",
    BAD_NUMBER: "number out of range",
    BAD_ENDPOINT: "invalid endpoint",
    UNKNOWN_NAME: "unknown strategy, delays or deadline provider",
    UNKNOWN_CACHE: "unknown cache alias",
    UNKNOWN_PRIORITY: "unknown priority",
    BAD_IMPORT: "dotted path not importable or of the wrong kind",
    CONFLICT: "values contradict each other",
    MISSING_KEY: "required key missing",
    NO_TRAILING_SLASH: "endpoint without a trailing slash",
    PER_PROCESS_CACHE: "breaker counts kept per process",
    LOSSY_CACHE: "breaker counts lost when processes write at once",
    SHORT_SHARED_SAMPLING: "a sampling period too short to count other processes' outcomes",
    LARGE_BUDGET: "a retry budget allowing more extra attempts than first ones",
    UNEXPECTED: "the setting could not be read",
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the setting: where (``path``), what, what is allowed, and its kind (``code``)."""

    path: str
    message: str
    hint: str | None = None
    warning: bool = False
    code: str = WRONG_TYPE

    def __str__(self) -> str:
        text = f"{SETTING}{self.path} {self.message}"
        text = f"{text} ({self.hint})" if self.hint else text
        return f"{text} [django_aio_request.{self.code}]"


class Unlisted(dict[Any, Any]):
    """What stands for a mapping of the setting whose keys could not be listed (its ``__iter__``
    raised): an error where it is, and read as no mapping at all, not as an empty one (whose missing
    ENDPOINT was another error, a false one)."""


class Reader:
    """Collects problems while reading; each method returns a value, or None after recording why not."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.provisional = False  # a dotted path was taken on trust (see Deferred)
        # Errors that stand only if the read finds no other (see dotted(): a module that could not
        # be imported because these very settings were refused), and the paths that could not be
        # read at all (an E099 there: what else is said of them follows from it, and is dropped).
        self.contingent: list[Problem] = []
        self.unreadable: list[str] = []

    def settle(self) -> None:
        """Once everything is read: the contingent errors if no other was found, and nothing said of
        a path that could not be read but its E099 (a key whose look-up raised was also "required",
        a mapping whose keys could not be listed "not Unlisted": a review)."""
        if self.contingent and not self.errors:
            self.problems.extend(self.contingent)
        self.contingent = []
        if self.unreadable:
            self.problems = [
                p
                for p in self.problems
                if p.code == UNEXPECTED or not any(p.path == u or p.path.startswith(u + "[") for u in self.unreadable)
            ]

    def fail(self, path: str, message: str, hint: str | None = None, *, code: str = WRONG_TYPE) -> None:
        self.problems.append(Problem(path, message, hint, code=code))

    @property
    def errors(self) -> int:
        """How many errors (not warnings) were recorded so far: a part read without a new one is valid."""
        return sum(not p.warning for p in self.problems)

    def mapping(
        self, path: str, value: Any, allowed: tuple[str, ...] | None, hint: str | None = None
    ) -> Mapping[str, Any] | None:
        if isinstance(value, Unlisted):
            return None  # its error is reported where it is: nothing of it can be read
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a dict, not {type(value).__name__}", hint)
            return None
        for key in value:
            if allowed is not None and key not in allowed:
                hint = "allowed keys: " + ", ".join(allowed)
                text = key if isinstance(key, str) else shown(key)
                # The keys are upper case: "endpoint" and "Timeout" are the same words (a review: no
                # hint for 4 of 4 such keys, difflib's ratio counts case), then the nearest spelling.
                same = [known for known in allowed if known.casefold() == text.strip().casefold()]
                close = same or difflib.get_close_matches(text.upper(), allowed, n=1)
                hint = f"did you mean {close[0]!r}? {hint}" if close else hint
                self.fail(f"{path}[{shown(key)}]", "is not a known key", hint, code=UNKNOWN_KEY)
        return value

    def named(self, path: str, value: Any, names: tuple[str, ...]) -> str | None:
        """The NAME of a dict that has one of ``names``. A value that is no dict is E002 at its own key
        (``"parallel"`` or None was told as E005 "['NAME'] is None, not a known name")."""
        if not isinstance(value, Mapping):
            example = value if isinstance(value, str) and value in names else names[0]
            hint = f"a dict with a NAME, e.g. {{'NAME': {example!r}}}; NAME allowed: " + ", ".join(names)
            self.fail(path, f"must be a dict, not {type(value).__name__}", hint)
            return None
        if "NAME" not in value:  # ({} or {"name": ...}: was told as "['NAME'] is None, not a known name")
            hint = "allowed: " + ", ".join(names)
            self.fail(f"{path}['NAME']", "is missing", hint, code=MISSING_KEY)
            return None
        name = value.get("NAME")
        if name not in names:
            hint = "allowed: " + ", ".join(names)
            self.fail(f"{path}['NAME']", f"is {shown(name)}, not a known name", hint, code=UNKNOWN_NAME)
            return None
        return str(name)


def shown(value: Any) -> str:
    """``repr(value)`` for a message, or what the value is when Python will not print it: a whole
    number of more than 4,300 digits (``10**5000``) is "an integer of 5001 digits", as ``repr`` raises
    ValueError for it, and for a list holding one; a message must never fail to be written.

    A string with ``//``, ``@``, ``?``, ``#`` or a character that is not ASCII in it is shown as an
    endpoint is (``shown_endpoint``): without what may be credentials, a query or a fragment; so is
    each such string inside a list, tuple, set or dict (whose keys named like secrets have their
    values hidden), and any other object whose text has one is named by its type only. A URL put where a name belongs
    (``"CIRCUIT_BREAKER_STATE": "redis://:password@redis:6379/0"``) was repeated whole by ``check``
    and by the ``InvalidSettings`` of a server's startup log."""
    if isinstance(value, str) and _may_hold_credentials(value):
        return repr(shown_endpoint(value))
    if isinstance(value, bytes | bytearray):
        text = value.decode("utf-8", "replace")
        if _may_hold_credentials(text):
            return repr(type(value)(shown_endpoint(text).encode("utf-8")))
    if isinstance(value, list | tuple | set | frozenset | Mapping) and _holds_text(value):
        # A URL pasted in a list, or a cache's whole entry where its alias belongs: each part is
        # shown as above (the repr of the container repeated them whole).
        return _shown_container(value, 0)
    try:
        text = repr(value)
    except Exception as error:
        if isinstance(value, int):
            digits = math.floor(math.log10(abs(value))) + 1
            digits -= abs(value) < 10 ** (digits - 1)  # log10 of 10**n - 1 rounds up to n
            return f"an integer of {digits} digits"
        return f"a {type(value).__name__} that cannot be printed ({type(error).__name__}: {error_text(error)})"
    # Any other object whose text may carry a URL's credentials (a deque, a UserString, ...): none
    # of its text is shown.
    return f"a {type(value).__name__}" if not isinstance(value, str) and _may_hold_credentials(text) else text


#: Keys whose values are secrets, as Django's error pages hide settings (SafeExceptionReporterFilter).
_SECRET_KEYS = re.compile("API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE", flags=re.IGNORECASE)


def _may_hold_credentials(text: str) -> bool:
    return "//" in text or "@" in text or "?" in text or "#" in text or not text.isascii()


def _secret_or(key: Any, item: Any, show: Callable[[Any], str]) -> str:
    """``'***'`` for the value of a key named like a secret (``OPTIONS: {"PASSWORD": ...}`` of a cache's
    entry pasted where its alias belongs), else the value as ``show`` shows it."""
    return "'***'" if isinstance(key, str) and _SECRET_KEYS.search(key) else show(item)


def _holds_text(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str | bytes | bytearray):
        return True
    if depth > 8:
        return False
    if isinstance(value, Mapping):
        return any(_holds_text(key, depth + 1) or _holds_text(item, depth + 1) for key, item in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_text(item, depth + 1) for item in value)
    return False


def _shown_container(value: Any, depth: int) -> str:
    def part(item: Any) -> str:
        if isinstance(item, list | tuple | set | frozenset | Mapping) and _holds_text(item):
            return "..." if depth >= 8 else _shown_container(item, depth + 1)  # (one that holds itself too)
        return shown(item)

    try:
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{part(key)}: {_secret_or(key, item, part)}" for key, item in value.items()) + "}"
        parts = ", ".join(part(item) for item in value)
        if isinstance(value, list):
            return f"[{parts}]"
        if isinstance(value, tuple):
            return f"({parts},)" if len(value) == 1 else f"({parts})"
        return f"{type(value).__name__}({{{parts}}})" if value else f"{type(value).__name__}()"
    except Exception as error:  # a message must never fail to be written
        return f"a {type(value).__name__} that cannot be printed ({type(error).__name__}: {error_text(error)})"


# Each field reader takes (reader, path, value) and returns the value or None (a problem recorded).
Field = Callable[[Reader, str, Any], Any]


#: The largest number any key takes. Larger ones are mistakes, not settings, and break far from the
#: setting: 1e10 seconds of TIMEOUT overflow the clocks a deadline meets (``OverflowError: timestamp
#: out of range``), 1e308 retries a second or a latency tolerance overflow to infinity, 10**400 is
#: not even a float. 999,999,999 seconds is 31 years, and the most X-Request-Timeout carries (nine
#: digits, server/middleware.py): a client TIMEOUT of 1e9 sent a header its downstream ignored.
LARGEST = 999_999_999
#: The smallest number of seconds a key takes: 1e-310 seconds is a float, but one over it is infinite.
SMALLEST_SECONDS = 1e-6


def _too_large(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) > LARGEST if isinstance(value, int) or math.isfinite(value) else False


def ok_type(value: Any) -> bool:
    """Whether ``value`` is of a type a number setting takes: an int (not a bool) or a float."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(
    minimum: float,
    *,
    inclusive: bool = True,
    below: float | None = None,
    at_most: float | None = None,
    what: str = "a number",
    says_minimum: bool = True,
) -> Field:
    """``says_minimum``: False where ``what`` names a floor of its own ("of at least 0.1"): the message
    then adds no "> 0" after it (a review read "at least 0.1 > 0")."""

    def read(reader: Reader, path: str, value: Any) -> float | None:
        if _too_large(value):
            reader.fail(path, f"must be {what} of at most {LARGEST}, not {shown(value)}", code=BAD_NUMBER)
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= minimum if inclusive else value > minimum)
        ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
        if not ok:
            parts = [(f">= {minimum}" if inclusive else f"> {minimum}")] if says_minimum else []
            parts += [f"< {below}"] if below is not None else []
            parts += [f"<= {at_most}"] if at_most is not None else []
            bounds = " " + " and ".join(parts) if parts else ""
            # A Decimal or a Fraction is a number, though not one taken here: say which are.
            odd = isinstance(value, numbers.Number) and not isinstance(value, bool) and not ok_type(value)
            taken = " (an int or a float)" if odd else ""
            reader.fail(path, f"must be {what}{taken}{bounds}, not {shown(value)}", code=BAD_NUMBER)
            return None
        return float(value)

    return read


def _whole_but_no_int(value: Any) -> bool:
    if not isinstance(value, numbers.Number) or isinstance(value, int):
        return False
    try:
        return bool(value == int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):  # complex, NaN, infinity
        return False


def integer(minimum: int, *, at_most: int | None = None, why: str | None = None) -> Field:
    """A whole number >= ``minimum``, and <= ``at_most`` if given (``why``: the hint when it is above)."""

    def read(reader: Reader, path: str, value: Any) -> int | None:
        if _too_large(value):
            most, hint = (LARGEST, None) if at_most is None else (min(at_most, LARGEST), why)
            reader.fail(path, f"must be a whole number of at most {most}, not {shown(value)}", hint, code=BAD_NUMBER)
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            # 2.0, Decimal(2) or Fraction(4, 2) is a whole number, though not one taken here: say which is.
            taken = " (an int)" if _whole_but_no_int(value) else ""
            reader.fail(path, f"must be a whole number{taken} >= {minimum}, not {shown(value)}", code=BAD_NUMBER)
            return None
        if at_most is not None and value > at_most:
            reader.fail(path, f"must be a whole number of at most {at_most}, not {shown(value)}", why, code=BAD_NUMBER)
            return None
        return value

    return read


def boolean(reader: Reader, path: str, value: Any) -> bool | None:
    if not isinstance(value, bool):
        reader.fail(path, f"must be True or False, not {shown(value)}")
        return None
    return value


def optional(field: Field) -> Field:
    """``field``, or None (no limit) when the value is None."""
    return lambda reader, path, value: None if value is None else field(reader, path, value)


def priority(reader: Reader, path: str, value: Any) -> Priority | None:
    parsed = Priority.parse(value) if isinstance(value, str) else None
    if parsed is None:
        allowed = "allowed: " + ", ".join(p.value for p in Priority)
        reader.fail(path, f"is {shown(value)}, not a priority", allowed, code=UNKNOWN_PRIORITY)
    return parsed


def names(reader: Reader, path: str, value: Any) -> frozenset[str] | None:
    """A list of service names as ``X-Service-Name`` carries them (``core.headers.service_name``:
    non-empty, ASCII), returned lower-cased. A name that is not ASCII passed, and no header could
    ever match it: the server refuses such a header's name as untrusted."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        reader.fail(path, f"must be a list of names, not {type(value).__name__}")
        return None
    bad = [name for name in value if not isinstance(name, str) or not (service_name(name) or "\n").isprintable()]
    if bad:
        reader.fail(
            path,
            f"must hold non-empty printable ASCII names only, not {shown(bad[0])}",
            "an X-Service-Name that is not ASCII is never taken for a known service",
        )
        return None
    return frozenset(cast(str, service_name(name)) for name in value)


def _still_importing(value: str) -> bool:
    """Whether the module of dotted path ``value`` is still being imported: by this thread, since an
    import by another would have been waited for (Python's lock on each module)."""
    module = sys.modules.get(value.rpartition(".")[0])
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


class Deferred:
    """A dotted path whose module was still being imported when the settings were read, by the thread
    reading them: found, and checked, when it is first called.

    A module the settings name (an enricher's) that looks a client up as it is imported, above the
    ``def`` the path names, read the settings with itself half imported (whether a read of the
    settings or the project's own code imported it first): no such name yet, a false E008, and every
    client and ``manage.py check`` refused (a review). Such a read takes the path on trust and is
    provisional (``AioRequestSettings.provisional``): not kept, and the clients made from it are
    dropped if the next read finds the settings invalid (named_clients.py); the next read, once the
    module is imported, checks the path as ever."""

    __slots__ = ("_accept", "_path", "_what")

    def __init__(self, path: str, what: str, accept: Callable[[Any], bool]) -> None:
        self._path, self._what, self._accept = path, what, accept

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from django.utils.module_loading import import_string

        try:
            found = import_string(self._path)
        except ImportError as error:
            raise ImportError(
                f"{self._path}, which the settings name, cannot be imported: {error_text(error)}"
                " (manage.py check reports it)"
            ) from error
        if not self._accept(found):
            raise TypeError(f"{self._path} names {shown(found)}, not {self._what}")
        return found(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<deferred {self._path}>"


def dotted(what: str, accept: Callable[[Any], bool], why: Callable[[Any], str | None] | None = None) -> Field:
    """The object a dotted path names, if ``accept`` takes it; ``why`` gives the hint of one it does not.
    A :class:`Deferred` while this thread is still importing the path's module."""

    def read(reader: Reader, path: str, value: Any) -> Any:
        from django.utils.module_loading import import_string

        if not isinstance(value, str):
            reader.fail(path, f"must be the dotted path of {what}, not {type(value).__name__}")
            return None
        try:
            found = import_string(value)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a module that fails, exits or raises its own BaseException as it is imported
            if isinstance(error, ImportError) and _still_importing(value):
                reader.provisional = True
                return Deferred(value, what, accept)
            # The error names the value ("No module named 'https://svc:pw@auth'"): such a value is
            # shown as shown() shows it, and the error's text left out.
            told = (
                f"cannot be imported: {_import_error_text(error)}"
                if shown(value) == repr(value)
                else f"{shown(value)} cannot be imported"
            )
            problem = Problem(path, told, f"give the dotted path of {what}", code=BAD_IMPORT)
            if _invalid_settings(error):
                # The module looked a client up as it was imported, and these settings' other problems
                # refused it: those are reported by this very read. Reported here too, a module that was
                # fine was named as one that cannot be imported, and each problem counted twice (a
                # review). Said only if the read finds no other error: the module raised it itself.
                reader.contingent.append(problem)
            else:
                reader.problems.append(problem)
            return None
        if not accept(found):
            reader.fail(path, f"names {shown(found)}, not {what}", why(found) if why else None, code=BAD_IMPORT)
            return None
        return found

    return read


def fields(
    reader: Reader, path: str, spec: Mapping[str, Any], schema: Mapping[str, tuple[Field, Any]]
) -> dict[str, Any]:
    """Read every key of ``schema`` (``KEY: (field, default)``) from ``spec``; missing keys take the default.

    A key whose reading fails in a way its field did not foresee (an object the setting names whose
    ``__signature__`` raises, a mapping whose look-up raises, a bug of this reader) is an E099 at that
    key, and the other keys are read as ever: it made the whole read one E099, which hid every other
    problem of the setting (a review)."""
    got: dict[str, Any] = {}
    for key, (read, default) in schema.items():
        where = f"{path}[{key!r}]"
        try:
            got[key] = read(reader, where, spec[key]) if key in spec else default
        except Exception as error:
            reader.fail(
                where,
                f"could not be read: {type(error).__name__}: {error_text(error)}",
                "a case django-aio-request did not foresee: please report it with the value",
                code=UNEXPECTED,
            )
            got[key] = None
    return got


def _import_error_text(error: BaseException) -> str:
    """What an import raised, for an E008: an ImportError's own text ("No module named 'x'"), any
    other error's with its type, which its text alone may not say: a bare ``assert`` has none, a
    ``KeyError`` is only the key, ``SystemExit(3)`` only "3"."""
    text = error_text(error)
    if isinstance(error, ImportError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _invalid_settings(error: BaseException) -> bool:
    """Whether ``error`` is the InvalidSettings of a read of these settings (conf/current.py, which
    imports this module)."""
    from django_aio_request.conf.current import InvalidSettings

    return isinstance(error, InvalidSettings)


def seconds(*, at_most: float | None = None, at_least: float | None = None, why: str | None = None) -> Field:
    """A number of seconds > 0, one microsecond at least (``at_least``, and ``why`` as the hint, if given)."""
    # With a floor of its own, the first message names it: "> 0" for a 0, and then "at least 0.1" for
    # a 0.01, sent a user round twice (a review).
    what = "a number of seconds" if at_least is None else f"a number of seconds of at least {at_least:g}"
    positive = number(0, inclusive=False, at_most=at_most, what=what, says_minimum=at_least is None)
    least = SMALLEST_SECONDS if at_least is None else at_least

    def read(reader: Reader, path: str, value: Any) -> float | None:
        got: float | None = positive(reader, path, value)
        if got is not None and got < least:
            reader.fail(
                path,
                f"must be a number of seconds of at least {least:g}, not {shown(value)}",
                why,
                code=BAD_NUMBER,
            )
            return None
        return got

    return read


SECONDS = seconds()

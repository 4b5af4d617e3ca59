"""What ``settings.AIO_REQUEST`` may hold, read into plain, validated data.

:func:`read_settings` returns :class:`AioRequestSettings` (or None) and every :class:`Problem`. The
system checks report the problems; the clients registry refuses to build from settings with
errors; both read through this one function, so they never disagree about what is valid. Nothing
is built here: ``building.py`` makes clients from a :class:`ClientSpec`.
"""

import dataclasses
import enum
import functools
import inspect
import urllib.parse
from collections.abc import Mapping
from typing import Any

from django_aio_request.breaker.cache_store import DEFAULT_SYNC_INTERVAL
from django_aio_request.conf.cache_backends import nearest_known
from django_aio_request.conf.reader import (
    BAD_ENDPOINT,
    BAD_NUMBER,
    CONFLICT,
    LARGE_BUDGET,
    LOSSY_CACHE,
    MISSING_KEY,
    NO_TRAILING_SLASH,
    PER_PROCESS_CACHE,
    SECONDS,
    SETTING,
    SHORT_SHARED_SAMPLING,
    UNEXPECTED,
    UNKNOWN_CACHE,
    UNKNOWN_PRIORITY,
    Field,
    Problem,
    Reader,
    Unlisted,
    boolean,
    dotted,
    fields,
    integer,
    names,
    number,
    optional,
    priority,
    seconds,
    shown,
)
from django_aio_request.core import headers as h
from django_aio_request.core.classifier import ResponseClassifier
from django_aio_request.core.client import HedgePriority, validate_hedge_priority
from django_aio_request.core.client_setup import DEFAULT_MAX_WORKERS, error_text, validate_endpoint
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import check_headers
from django_aio_request.core.retry_budget import DEFAULT_MIN_PER_SECOND, DEFAULT_RATIO, DEFAULT_WINDOW_SECONDS
from django_aio_request.strategies.base import MAX_ATTEMPTS
from django_aio_request.strategies.percentile_delays import PercentileDelaysProvider
from django_aio_request.transport.requests_transport import (
    _CONNECTIONS_WHY,
    _RETRIES_WHY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_SIZE,
    MOST_CONNECT_RETRIES,
    MOST_CONNECTIONS,
)

__all__ = [
    "SETTING",
    "AioRequestSettings",
    "ClientSpec",
    "DelaysSpec",
    "Problem",
    "SheddingSettings",
    "StrategySpec",
    "read_settings",
]

TOP_LEVEL_KEYS = (
    "SERVICE_NAME",
    "CLIENTS",
    # the server side (AioRequestMiddleware), read with SERVER_SCHEMA
    "TIMEOUT",
    "PRIORITY",
    "MAX_TIMEOUT",
    "LOW_TIMEOUT_THRESHOLD",
    "CANCEL_ASYNC_VIEWS_ON_TIMEOUT",
    # the database wrapper (db.py)
    "DATABASE_STATEMENT_TIMEOUT",
    # where circuit breakers count: "local" or a cache alias (shared_breaker.py)
    "CIRCUIT_BREAKER_STATE",
    # metrics: the calling services labelled by name (others are "other"); see docs/metrics.md
    "KNOWN_SERVICES",
    # the admin's view of breakers (breaker_publisher.py): how often each process publishes, history kept
    "CIRCUIT_BREAKER_PUBLISH_INTERVAL",
    "CIRCUIT_BREAKER_HISTORY_DAYS",
    # priority-aware load shedding in AioRequestMiddleware (server/shedding/); None (the default): off
    "SHEDDING",
)
STRATEGY_NAMES = ("single", "sequential", "parallel", "retry_until_deadline_expired")
DELAYS_NAMES = ("constant", "linear_backoff", "percentile")


#: The longest client name and ENDPOINT: what the breakers' tables in admin hold (models.py).
CLIENT_NAME_LENGTH = 100
ENDPOINT_LENGTH = 400

LOCAL_BREAKER_STATE = "local"
# Caches that hold their data in each process: naming one shares nothing between processes.
PER_PROCESS_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)
# Shared caches whose `incr` is Django's generic one, a `get` then a `set` (and, for files, `add` a
# look then a write): two processes flushing counts at once keep one of them, and two may win a
# probe claim. Eight stores flushing at once into a FileBasedCache kept about a fifth of the counts
# (tests/breaker/test_cache_store.py::test_counts_flushed_by_many_processes_at_once_add_up_only_where_incr_is_atomic).
LOSSY_CACHES = (
    "django.core.cache.backends.filebased.FileBasedCache",
    "django.core.cache.backends.db.DatabaseCache",
)


def breaker_state(reader: Reader, path: str, value: Any) -> str | None:
    """ "local", or the alias of a cache in ``settings.CACHES`` (where every process shares breaker counts)."""
    from django.conf import settings

    caches = getattr(settings, "CACHES", None)
    caches = caches if isinstance(caches, Mapping) else {}  # Django itself fails on CACHES of another type
    aliases = list(caches)
    allowed = ", ".join(repr(a) for a in [LOCAL_BREAKER_STATE, *aliases])
    if not isinstance(value, str) or not value:
        message = f"must be 'local' or the alias of a cache in settings.CACHES, not {shown(value)}"
        reader.fail(path, message, "allowed: " + allowed, code=UNKNOWN_CACHE)
        return None
    if value == LOCAL_BREAKER_STATE:
        return value
    if value not in aliases:
        message = f"is {shown(value)}, not 'local' nor a cache in settings.CACHES"
        reader.fail(path, message, "allowed: " + allowed, code=UNKNOWN_CACHE)
        return None
    if not isinstance(caches[value], Mapping):  # a list, a URL: Django cannot open it either
        message = f"names settings.CACHES[{value!r}], which is a {type(caches[value]).__name__}, not a cache's settings"
        reader.fail(path, message, "a dict with BACKEND (and LOCATION), as Django's CACHES takes", code=UNKNOWN_CACHE)
        return None
    backend = str(caches[value].get("BACKEND", ""))
    kind = nearest_known(backend, PER_PROCESS_CACHES + LOSSY_CACHES)  # a subclass is judged as its base
    if kind in PER_PROCESS_CACHES:
        hint = "use a cache all processes reach, e.g. django.core.cache.backends.redis.RedisCache"
        reader.problems.append(
            Problem(
                path,
                f"names cache {shown(value)} ({backend}), which each process keeps apart",
                hint,
                warning=True,
                code=PER_PROCESS_CACHE,
            )
        )
    elif kind in LOSSY_CACHES:
        hint = "use a cache with atomic add and incr, e.g. django.core.cache.backends.redis.RedisCache or Memcached"
        reader.problems.append(
            Problem(
                path,
                f"names cache {shown(value)} ({backend}), whose incr is a read then a write: outcomes that"
                " processes flush at once are lost, and the breakers open late or not at all",
                hint,
                warning=True,
                code=LOSSY_CACHE,
            )
        )
    return value


DELAYS_SCHEMAS: dict[str, dict[str, tuple[Field, Any]]] = {
    "constant": {"DELAY": (number(0, what="a delay in seconds"), 0.0)},
    "linear_backoff": {
        "MIN_DELAY_SECONDS": (number(0), 0.0),
        "DELAY_MULTIPLIER": (number(0), 0.05),
        "JITTER": (number(0, at_most=1, what="a fraction"), 0.2),
    },
    "percentile": {
        "PERCENTILE": (number(0, inclusive=False, below=1, what="a fraction"), 0.95),
        "MIN_DELAY_SECONDS": (number(0), 0.01),
        "MAX_DELAY_SECONDS": (number(0), 10.0),
        "WINDOW_SECONDS": (SECONDS, 300.0),
        "SATURATION_RATIO": (number(0), 0.0),  # 0: off; else > 1 (PercentileDelaysProvider)
    },
}
CIRCUIT_BREAKER_SCHEMA: dict[str, tuple[Field, Any]] = {
    "BREAK_DURATION": (SECONDS, 5.0),
    "SAMPLING_DURATION": (SECONDS, 10.0),
    "MINIMUM_THROUGHPUT": (integer(1), 10),
    "FAILURE_THRESHOLD": (number(0, inclusive=False, below=1, what="a ratio"), 0.5),
    "WINDOWS_COUNT": (integer(1, at_most=1000), 10),  # a shared store reads 2 keys a window every 0.1 s
}
RETRY_BUDGET_SCHEMA: dict[str, tuple[Field, Any]] = {
    "RATIO": (number(0, what="a ratio of first attempts"), DEFAULT_RATIO),
    "MIN_PER_SECOND": (number(0, what="a number of extra attempts per second"), DEFAULT_MIN_PER_SECOND),
    "WINDOW_SECONDS": (SECONDS, DEFAULT_WINDOW_SECONDS),
}


def retry_budget(reader: Reader, path: str, value: Any) -> dict[str, float] | bool | None:
    """A client's ``RETRY_BUDGET``: False (no budget), True (the defaults) or a dict of RETRY_BUDGET_SCHEMA."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, Mapping):
        allowed = "False to turn it off, True for the defaults, or a dict with " + ", ".join(RETRY_BUDGET_SCHEMA)
        reader.fail(path, f"must be False, True or a dict, not {shown(value)}", allowed)
        return None
    spec = reader.mapping(path, value, tuple(RETRY_BUDGET_SCHEMA))
    got = fields(reader, path, spec or {}, RETRY_BUDGET_SCHEMA)
    ratio = got.get("RATIO")
    if ratio is not None and ratio > 1:
        # As written: the shortest form that reads back as the same number (``:g`` said "is 1, above 1"
        # of 1.0000001, ``:.15g`` of 1.0000000000000002: reviews)
        written = str(int(ratio)) if float(ratio).is_integer() else repr(float(ratio))  # at most 999,999,999
        # Valid, and almost always a percentage written as one ("RATIO": 20 for 20%): it passed the
        # check, and the budget then refused no retry or hedge of a client making up to 21 attempts a
        # call, so retries multiplied the load on a struggling service as if there were no budget.
        reader.problems.append(
            Problem(
                f"{path}['RATIO']",
                f"is {written}, above 1: it allows {written} extra attempts (retries and hedges) for every first"
                " attempt, so it refuses none while calls make fewer, and retries may multiply the load on a"
                " service that is failing",
                "RATIO is a fraction of first attempts: 0.2 allows one extra attempt for every five first ones (20%)",
                warning=True,
                code=LARGE_BUDGET,
            )
        )
    return None if None in got.values() else got


def hedge_priority(reader: Reader, path: str, value: Any) -> HedgePriority:
    """A client's ``HEDGE_PRIORITY``: None, "lower", or a priority."""
    try:
        return validate_hedge_priority(value)
    except ValueError:
        allowed = "None (the call's priority), 'lower' (one step lower), or " + ", ".join(p.value for p in Priority)
        reader.fail(path, f"is {shown(value)}, not a hedge priority", "allowed: " + allowed, code=UNKNOWN_PRIORITY)
        return None


def _classifier_class(found: Any) -> bool:
    """A ResponseClassifier subclass that the client can build as it does, ``cls()``: one whose
    ``__init__`` needs arguments passed the check and raised TypeError when the client was built, and
    so did one still abstract (``classify`` misspelt, or ResponseClassifier itself): "Can't
    instantiate abstract class" at the first use of the client, in every view that used it."""
    if not (isinstance(found, type) and issubclass(found, ResponseClassifier)) or inspect.isabstract(found):
        return False
    if _is_async(getattr(found, "classify", None)) or _classify_problem(found) is not None:
        return False
    try:
        inspect.signature(found).bind()
    except TypeError:
        return False
    except Exception:  # no signature to read (a class made in C, a __signature__ that raises): the build will tell
        return True
    return True


def _not_a_classifier(found: Any) -> str | None:
    """Why a class that subclasses ResponseClassifier cannot be the client's classifier."""
    if isinstance(found, type) and issubclass(found, ResponseClassifier) and inspect.isabstract(found):
        missing = ", ".join(sorted(getattr(found, "__abstractmethods__", ())))
        return f"{found.__name__} is abstract: it does not define {missing} (is its name misspelt?)"
    if isinstance(found, type) and _is_async(getattr(found, "classify", None)):
        # Its coroutine, never awaited, was taken for the verdict: every 200 a failure, the breaker open.
        return (
            f"{found.__name__}.classify is async (async def): the client calls it on the call's thread and"
            " takes what it returns as the verdict, never awaited; write it as a plain def"
        )
    if isinstance(found, type):
        return _classify_problem(found)
    return None


def _classify_problem(found: Any) -> str | None:
    """Why the client cannot call ``found().classify(response)``, read from its signature: a
    ``classify(self)`` passed the check and every call raised TypeError."""
    static = inspect.getattr_static(found, "classify", None)
    if isinstance(static, staticmethod | classmethod):
        arguments = 1  # read from the class, either takes the response alone
    elif inspect.isfunction(static):
        arguments = 2  # the instance, then the response
    else:
        return None  # another kind of attribute (a callable instance, a C method): the call will tell
    return _not_callable_with(found.classify, arguments, "a Response, as the client calls it")


def _is_async(found: Any) -> bool:
    """Whether calling ``found`` (a function, or an instance with ``__call__``) makes a coroutine or an
    async generator, which the client, calling it on the call's thread, would never await."""
    if found is None:
        return False
    function = _called(found)
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def _is_generator(found: Any) -> bool:
    """Whether calling ``found`` (a function, or an instance with ``__call__``) makes a generator."""
    return found is not None and inspect.isgeneratorfunction(_called(found))


def _called(found: Any) -> Any:
    """The function that runs when ``found`` (a function, or an instance with ``__call__``) is called."""
    function = found if inspect.isroutine(found) or isinstance(found, functools.partial) else type(found).__call__
    # A partialmethod read from its class is a plain function holding it (Python 3.11 and 3.12 look no further).
    partial_method = getattr(function, "_partialmethod", None) or getattr(function, "__partialmethod__", None)
    if isinstance(partial_method, functools.partialmethod):
        function = partial_method.func
    # Not through __wrapped__: a sync wrapper of an async def may run it (asgiref's async_to_sync is
    # one), or return its coroutine; the check cannot tell the two apart, and takes the wrapper as sync.
    return function


def _function_or_instance(found: Any) -> bool:
    """A function (or an instance with ``__call__``), such as the client calls with each attempt's
    Request. A class is callable too, but calling it makes an instance of it, not a Request: a class
    passed the check and every call raised TypeError ("AuthEnricher() takes no arguments"). A class
    whose metaclass defines ``__call__`` is called as that says, and is taken."""
    return callable(found) and not _makes_instances(found)


def _makes_instances(found: Any) -> bool:
    """Whether calling ``found`` makes an instance of it: a class whose metaclass calls as ``type`` does,
    or an Enum class, whose metaclass's ``__call__`` looks up a member (an instance of it) and, given a
    second argument, tries to make a new Enum: ``Priority`` named as the policy passed the check and
    every request under load shedding raised TypeError ("cannot extend <enum 'Priority'>")."""
    return isinstance(found, type) and (type(found).__call__ is type.__call__ or _is_enum(found))


def _is_enum(found: Any) -> bool:
    return isinstance(found, type) and issubclass(found, enum.Enum)


def _not_callable_with(found: Any, arguments: int, what: str) -> str | None:
    """Why ``found`` cannot be called with ``arguments`` positional arguments, read from its
    signature (None when it can, or when it has none to read: a builtin, a C extension's callable).

    Both the signature ``functools.wraps`` shows (the wrapped function's) and the wrapper's own must
    refuse: a wrapper ``(request, priority)`` around a function with one more keyword argument is
    called as the wrapper says, and was refused by the wrapped function's signature alone.
    """
    problem = None
    for follow_wrapped in (True, False):
        try:
            signature = inspect.signature(found, follow_wrapped=follow_wrapped)
        except Exception:  # none to read (a builtin), or a __signature__ of the user's that raises
            return None
        try:
            signature.bind(*[None] * arguments)
        except TypeError as error:
            name = getattr(found, "__qualname__", None) or type(found).__qualname__
            problem = problem or f"{name}{signature} cannot be called with {what}: {error}"
        else:
            return None
    return problem


def _an_enricher(found: Any) -> bool:
    return _function_or_instance(found) and _not_an_enricher(found) is None


def _not_an_enricher(found: Any) -> str | None:
    if _is_enum(found):
        return f"{found.__name__} is a class, an Enum: calling it with each Request looks up a member; name a function"
    if _makes_instances(found):
        return (
            f"{found.__name__} is a class: the client would call it with each Request and get an instance"
            f" of it back; name a function, or an instance (e.g. enricher = {found.__name__}())"
        )
    if _is_async(found):
        # Passed the check, and every call raised TypeError ("returned coroutine, not a Request").
        name = getattr(found, "__qualname__", None) or type(found).__qualname__
        return (
            f"{name} is async (async def): the client calls it on the call's thread and takes what it"
            " returns as the Request, never awaited; write it as a plain def"
        )
    if _is_generator(found):
        # Passed the check, and every call raised TypeError ("returned generator, not a Request").
        name = getattr(found, "__qualname__", None) or type(found).__qualname__
        return (
            f"{name} is a generator function (it yields): the client calls it with each Request and takes"
            " what it returns as the Request, a generator; return the Request instead"
        )
    # A wrong number of parameters passed the check, and every call raised TypeError.
    return _not_callable_with(found, 1, "the Request alone, as the client calls it")


CLIENT_SCHEMA: dict[str, tuple[Field, Any]] = {
    "TIMEOUT": (SECONDS, 20.0),
    "PRIORITY": (priority, Priority.NORMAL),
    "LOW_TIMEOUT_THRESHOLD": (number(0, what="a number of seconds"), 0.005),
    "EMIT_SYSTEM_HEADERS": (boolean, True),
    "MAX_WORKERS": (integer(1), DEFAULT_MAX_WORKERS),
    "MAX_CONNECTIONS": (integer(1, at_most=MOST_CONNECTIONS, why=_CONNECTIONS_WHY), DEFAULT_MAX_CONNECTIONS),
    "CONNECT_RETRIES": (integer(0, at_most=MOST_CONNECT_RETRIES, why=_RETRIES_WHY), 0),
    "MAX_RESPONSE_SIZE": (optional(integer(0)), DEFAULT_MAX_RESPONSE_SIZE),
    "RESPONSE_CLASSIFIER": (
        dotted("a ResponseClassifier subclass built with no arguments", _classifier_class, _not_a_classifier),
        None,
    ),
    "REQUEST_ENRICHER": (
        dotted("a function taking and returning a Request", _an_enricher, _not_an_enricher),
        None,
    ),
    # the retry budget (retry_budget.py) and hedges' priority: docs/budgets-and-shedding.md
    "RETRY_BUDGET": (retry_budget, True),
    "HEDGE_PRIORITY": (hedge_priority, None),
}
#: The most CIRCUIT_BREAKER_HISTORY_DAYS: a century, longer than any history is looked at. Each
#: prune deletes the transitions before now minus that many days, and past about 739,000 days (the
#: days since 1 January of year 1) that date does not exist: every publishing round failed with
#: OverflowError and the admin never saw the process
#: (tests/conf/test_reader.py::test_history_days_above_a_century_is_an_error).
MOST_HISTORY_DAYS = 36_500
_DAYS = number(0, inclusive=False, what="a number of days")


def days_kept(reader: Reader, path: str, value: Any) -> float | None:
    """A number of days > 0, at most MOST_HISTORY_DAYS."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > MOST_HISTORY_DAYS:
        message = f"must be a number of days of at most {MOST_HISTORY_DAYS} (a century), not {shown(value)}"
        hint = "the days breaker transitions are kept: 740,000 days ago is before year 1, and pruning failed"
        reader.fail(path, message, hint, code=BAD_NUMBER)
        return None
    got: float | None = _DAYS(reader, path, value)
    return got


# The server side: how AioRequestMiddleware treats incoming requests.
DEFAULT_SERVER_TIMEOUT = 20.0
DEFAULT_SERVER_PRIORITY = Priority.NORMAL
DEFAULT_MAX_TIMEOUT = 60.0
DEFAULT_SERVER_LOW_TIMEOUT_THRESHOLD = 0.005
SERVER_SCHEMA: dict[str, tuple[Field, Any]] = {
    "TIMEOUT": (SECONDS, DEFAULT_SERVER_TIMEOUT),
    "PRIORITY": (priority, DEFAULT_SERVER_PRIORITY),
    "MAX_TIMEOUT": (SECONDS, DEFAULT_MAX_TIMEOUT),
    "LOW_TIMEOUT_THRESHOLD": (number(0, what="a number of seconds"), DEFAULT_SERVER_LOW_TIMEOUT_THRESHOLD),
    "CANCEL_ASYNC_VIEWS_ON_TIMEOUT": (boolean, False),
    "DATABASE_STATEMENT_TIMEOUT": (boolean, False),
    "CIRCUIT_BREAKER_STATE": (breaker_state, LOCAL_BREAKER_STATE),
    # Each round reads and writes the database: at 1e-6 s an idle process kept 28% of a core busy
    # with 290 queries a second (a review).
    "CIRCUIT_BREAKER_PUBLISH_INTERVAL": (
        seconds(at_least=0.1, why="each round reads and writes the database: 1 s is the default"),
        1.0,
    ),
    "CIRCUIT_BREAKER_HISTORY_DAYS": (days_kept, 7.0),
}
# Load shedding (AIO_REQUEST["SHEDDING"]): read into SheddingSettings; server/shedding/ builds the limiter.
PRIORITY_POLICIES = ("any", "known_services")  # or the dotted path of a callable


def _a_policy(found: Any) -> bool:
    return _function_or_instance(found) and _not_a_policy(found) is None


def _not_a_policy(found: Any) -> str | None:
    """A class is callable, but calling it with (request, priority) makes an instance of it: every
    request under load shedding would have failed, as a class named by REQUEST_ENRICHER did."""
    if _is_enum(found):
        return (
            f"{found.__name__} is a class, an Enum: calling it with (request, claimed priority) tries to make a"
            " new Enum; name a function"
        )
    if _makes_instances(found):
        return (
            f"{found.__name__} is a class: calling it with (request, claimed priority) makes an instance of it,"
            f" not a Priority; name a function, or an instance (e.g. policy = {found.__name__}())"
        )
    # A wrong number of parameters passed the check, and every request under shedding answered 500.
    return _not_callable_with(found, 2, "(request, claimed priority), as the middleware calls it")


def _priority_policy(reader: Reader, path: str, value: Any) -> Any:
    if value in PRIORITY_POLICIES:
        return value
    if isinstance(value, str) and "." in value:
        policy = dotted("a callable (request, claimed priority) -> Priority", _a_policy, _not_a_policy)
        return policy(reader, path, value)
    reader.fail(
        path, f"is {shown(value)}, not a policy", "allowed: " + ", ".join(PRIORITY_POLICIES) + ", or a dotted path"
    )
    return None


SHEDDING_SCHEMA: dict[str, tuple[Field, Any]] = {
    "MAX_CONCURRENCY": (optional(integer(1)), None),
    "MIN_LIMIT": (integer(1), 1),
    "MAX_LIMIT": (integer(1), 1000),
    "LATENCY_TOLERANCE": (number(1, inclusive=False, what="a latency ratio"), 1.5),
    "PROBE_INTERVAL": (SECONDS, 30.0),
    "QUEUE_TIMEOUT": (number(0, what="a number of seconds"), 0.5),
    "MIN_TIME_TO_SERVE": (number(0, what="a number of seconds"), 0.01),
    "RETRY_AFTER": (integer(0), 1),
    "PRIORITY_POLICY": (_priority_policy, "any"),
    "UNTRUSTED_PRIORITY": (priority, Priority.NORMAL),
    "SWITCH_INTERVAL": (optional(seconds(at_most=1.0)), 0.002),  # more: the interpreter reads 1e300 as 0
}
SHEDDING_KEYS = tuple(SHEDDING_SCHEMA)
_REMOVED_SHEDDING_KEYS = ("HIGH_PRIORITY_RESERVE", "NORMAL_PRIORITY_RESERVE")
CLIENT_KEYS = ("ENDPOINT", *CLIENT_SCHEMA, "SAFE_METHOD_STRATEGY", "UNSAFE_METHOD_STRATEGY", "CIRCUIT_BREAKER")


@dataclasses.dataclass(frozen=True)
class DelaysSpec:
    """A validated ``DELAYS``: ``NAME`` and the keys of its schema (DELAYS_SCHEMAS), defaults filled in."""

    name: str
    options: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """A validated strategy (``SAFE_METHOD_STRATEGY`` and the like); ``conf/building.py`` makes it."""

    name: str
    attempts_count: int = 3
    delays: DelaysSpec | None = None  # None: linear backoff with its defaults
    split_deadline: bool = False  # DEADLINE_PROVIDER "split" (else "pass_through")
    attempts_count_to_split: int | None = None
    inner: "StrategySpec | None" = None  # retry_until_deadline_expired's STRATEGY
    stragglers_only: bool = True  # parallel's STRAGGLERS_ONLY


# With an unknown NAME, the keys are still read where they mean the same whatever the name (each key
# reads alike in every schema that has it), so that their problems are reported with the name's.
_ANY_DELAYS_SCHEMA = {key: field for schema in DELAYS_SCHEMAS.values() for key, field in schema.items()}
STRATEGY_KEYS = {
    "single": ("NAME",),
    "sequential": ("NAME", "ATTEMPTS_COUNT", "DELAYS", "DEADLINE_PROVIDER"),
    "parallel": ("NAME", "ATTEMPTS_COUNT", "DELAYS", "STRAGGLERS_ONLY"),
    "retry_until_deadline_expired": ("NAME", "STRATEGY", "DELAYS"),
}
_ANY_STRATEGY_KEYS = tuple(dict.fromkeys(key for keys in STRATEGY_KEYS.values() for key in keys))
DEADLINE_PROVIDER_KEYS = {"pass_through": ("NAME",), "split": ("NAME", "ATTEMPTS_COUNT_TO_SPLIT")}
ATTEMPTS_COUNT = integer(1, at_most=MAX_ATTEMPTS)
ATTEMPTS_COUNT_TO_SPLIT = integer(2)

# Each part below reads every key it has, whatever else is wrong, and builds nothing if any of them
# (or the NAME) is: every problem is reported at once, not one per run of `manage.py check`.


def _delays(reader: Reader, path: str, value: Any) -> DelaysSpec | None:
    name = reader.named(path, value, DELAYS_NAMES)
    if not isinstance(value, Mapping):
        return None  # named() reported it
    errors = reader.errors
    schema = DELAYS_SCHEMAS[name] if name else _ANY_DELAYS_SCHEMA
    reader.mapping(path, value, ("NAME", *schema))  # reports the keys not in the schema
    got = fields(reader, path, value, schema)
    if name == "percentile":
        low, high, ratio = got["MIN_DELAY_SECONDS"], got["MAX_DELAY_SECONDS"], got["SATURATION_RATIO"]
        if low is not None and high is not None and low > high:
            reader.fail(f"{path}['MIN_DELAY_SECONDS']", "must not exceed MAX_DELAY_SECONDS", code=CONFLICT)
        if ratio is not None and 0 < ratio <= 1:
            reader.fail(f"{path}['SATURATION_RATIO']", "must be 0 (off) or above 1", code=BAD_NUMBER)
        window, shortest = got["WINDOW_SECONDS"], PercentileDelaysProvider.MIN_SATURATION_WINDOW
        if ratio is not None and ratio > 1 and window is not None and window < shortest:
            reader.fail(
                f"{path}['WINDOW_SECONDS']",
                f"must be at least {shortest:g} with SATURATION_RATIO on: the baseline saturation is judged"
                " against is the least 75th percentile of the window",
                code=CONFLICT,
            )
    if name is None or reader.errors > errors:
        return None
    return DelaysSpec(name, got)


def _deadline_provider(reader: Reader, path: str, value: Any) -> tuple[bool, int | None] | None:
    """(split the deadline?, ATTEMPTS_COUNT_TO_SPLIT or None), or None after a problem."""
    name = reader.named(path, value, tuple(DEADLINE_PROVIDER_KEYS))
    if not isinstance(value, Mapping):
        return None  # named() reported it
    errors = reader.errors
    allowed = DEADLINE_PROVIDER_KEYS[name] if name else DEADLINE_PROVIDER_KEYS["split"]
    spec = reader.mapping(path, value, allowed) or {}
    split = (
        ATTEMPTS_COUNT_TO_SPLIT(reader, f"{path}['ATTEMPTS_COUNT_TO_SPLIT']", spec["ATTEMPTS_COUNT_TO_SPLIT"])
        if "ATTEMPTS_COUNT_TO_SPLIT" in spec and "ATTEMPTS_COUNT_TO_SPLIT" in allowed
        else None
    )
    if name is None or reader.errors > errors:
        return None
    return name == "split", split


#: How deep strategies may nest (retry_until_deadline_expired's STRATEGY, and so on): a dict that
#: held itself recursed until Python's limit, an E099 "a bug to report" that hid every other problem.
MOST_NESTED_STRATEGIES = 8


def _strategy(reader: Reader, path: str, value: Any) -> StrategySpec | None:
    if path.count("['STRATEGY']") > MOST_NESTED_STRATEGIES:
        reader.fail(path, f"nests strategies more than {MOST_NESTED_STRATEGIES} deep", "does a STRATEGY hold itself?")
        return None
    name = reader.named(path, value, STRATEGY_NAMES)
    if not isinstance(value, Mapping):
        return None  # named() reported it
    errors = reader.errors
    allowed = STRATEGY_KEYS[name] if name else _ANY_STRATEGY_KEYS
    spec = {key: option for key, option in (reader.mapping(path, value, allowed) or {}).items() if key in allowed}
    delays = _delays(reader, f"{path}['DELAYS']", spec["DELAYS"]) if "DELAYS" in spec else None
    attempts = (
        ATTEMPTS_COUNT(reader, f"{path}['ATTEMPTS_COUNT']", spec["ATTEMPTS_COUNT"]) if "ATTEMPTS_COUNT" in spec else 3
    )
    deadlines = (
        _deadline_provider(reader, f"{path}['DEADLINE_PROVIDER']", spec["DEADLINE_PROVIDER"])
        if "DEADLINE_PROVIDER" in spec
        else (False, None)
    )
    inner = _strategy(reader, f"{path}['STRATEGY']", spec["STRATEGY"]) if "STRATEGY" in spec else None
    stragglers_only = (
        boolean(reader, f"{path}['STRAGGLERS_ONLY']", spec["STRAGGLERS_ONLY"]) if "STRAGGLERS_ONLY" in spec else True
    )
    if name == "retry_until_deadline_expired" and "STRATEGY" not in spec:
        hint = "e.g. {'NAME': 'single'}"
        reader.fail(f"{path}['STRATEGY']", "is required: the strategy to repeat", hint, code=MISSING_KEY)
    if name is None or attempts is None or deadlines is None or stragglers_only is None or reader.errors > errors:
        return None
    split, split_count = deadlines
    return StrategySpec(
        name,
        attempts_count=attempts,
        delays=delays,
        split_deadline=split,
        attempts_count_to_split=split_count,
        inner=inner,
        stragglers_only=stragglers_only,
    )


def _circuit_breaker(reader: Reader, path: str, value: Any) -> dict[str, Any] | None:
    """The breaker's options, keyed by ``DefaultCircuitBreaker``'s argument names."""
    hint = "None for no circuit breaker, {} for one with the defaults" if isinstance(value, bool) else None
    spec = reader.mapping(path, value, tuple(CIRCUIT_BREAKER_SCHEMA), hint)
    if spec is None:
        return None
    got = fields(reader, path, spec, CIRCUIT_BREAKER_SCHEMA)
    if None in got.values():
        return None
    return {key.lower(): option for key, option in got.items()}


def _endpoint(reader: Reader, path: str, spec: Mapping[str, Any]) -> str | None:
    if "ENDPOINT" not in spec:
        hint = "the absolute URL of the service, e.g. 'http://billing:8080/'"
        reader.fail(path, "is required", hint, code=BAD_ENDPOINT)
        return None
    try:
        endpoint = validate_endpoint(spec["ENDPOINT"])
    except ValueError as error:
        reader.fail(path, str(error), "e.g. 'http://billing:8080/'", code=BAD_ENDPOINT)
        return None
    if len(endpoint) > ENDPOINT_LENGTH:
        # The breakers' tables in admin hold that much: a longer one failed every publishing round of
        # the process (PostgreSQL: value too long), its other clients' reports and transitions too.
        reader.fail(path, f"is longer than {ENDPOINT_LENGTH} characters ({len(endpoint)})", code=BAD_ENDPOINT)
        return None
    path_part = urllib.parse.urlsplit(endpoint).path
    if path_part and not path_part.endswith("/"):  # none at all ("http://billing:8080") joins as "/"
        hint = "relative request URLs replace the endpoint's last path segment (RFC 3986); add a trailing '/'"
        reader.problems.append(Problem(path, "does not end with '/'", hint, warning=True, code=NO_TRAILING_SLASH))
    return endpoint


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """A validated client entry: plain data. ``conf.building.build_client`` makes a client of it."""

    name: str
    endpoint: str
    options: Mapping[str, Any]  # CLIENT_SCHEMA's keys, validated, defaults filled in
    safe_method_strategy: StrategySpec | None = None
    unsafe_method_strategy: StrategySpec | None = None
    circuit_breaker: Mapping[str, Any] | None = None
    response_classifier: type[ResponseClassifier] | None = None
    circuit_breaker_state: str = LOCAL_BREAKER_STATE  # AIO_REQUEST["CIRCUIT_BREAKER_STATE"]


def _client(reader: Reader, name: str, value: Any, path: str) -> ClientSpec | None:
    spec = reader.mapping(path, value, CLIENT_KEYS)
    if spec is None:
        return None
    errors = reader.errors
    endpoint = _endpoint(reader, f"{path}['ENDPOINT']", spec)
    options = fields(reader, path, spec, CLIENT_SCHEMA)
    strategies = {
        key: _strategy(reader, f"{path}[{key!r}]", spec[key])
        for key in ("SAFE_METHOD_STRATEGY", "UNSAFE_METHOD_STRATEGY")
        if key in spec
    }
    breaker = None
    if spec.get("CIRCUIT_BREAKER") is not None:
        breaker = _circuit_breaker(reader, f"{path}['CIRCUIT_BREAKER']", spec["CIRCUIT_BREAKER"])
    classifier = options.pop("RESPONSE_CLASSIFIER")
    _check_threshold_below_timeout(reader, path, spec, options["TIMEOUT"], options["LOW_TIMEOUT_THRESHOLD"])
    for key, strategy in strategies.items():
        _check_threshold_below_first_share(
            reader, f"{path}[{key!r}]", strategy, options["TIMEOUT"], options["LOW_TIMEOUT_THRESHOLD"]
        )
    if endpoint is None or reader.errors > errors:
        return None
    return ClientSpec(
        name,
        endpoint,
        options,
        safe_method_strategy=strategies.get("SAFE_METHOD_STRATEGY"),
        unsafe_method_strategy=strategies.get("UNSAFE_METHOD_STRATEGY"),
        circuit_breaker=breaker,
        response_classifier=classifier,
    )


def _check_threshold_below_timeout(
    reader: Reader, path: str, spec: Mapping[str, Any], timeout: float | None, threshold: float | None
) -> None:
    """A client's LOW_TIMEOUT_THRESHOLD must be below its TIMEOUT: an attempt with less time left
    than the threshold is answered 408 without being sent, and a call with no deadline of its own
    has at most TIMEOUT. TIMEOUT 1 with LOW_TIMEOUT_THRESHOLD 5, or TIMEOUT 0.004 (below the default
    0.005), passed the check and the client sent nothing, ever. Told at the key that was set."""
    if timeout is None or threshold is None or threshold < timeout:
        return
    hint = (
        "an attempt with less time left than LOW_TIMEOUT_THRESHOLD is answered 408 without being sent,"
        " and a call with no deadline of its own has at most TIMEOUT: the client would send none"
    )
    if "LOW_TIMEOUT_THRESHOLD" in spec:
        given = "" if "TIMEOUT" in spec else ", the default"
        message = f"({threshold}) must be less than TIMEOUT ({timeout}{given})"
        reader.fail(f"{path}['LOW_TIMEOUT_THRESHOLD']", message, hint, code=CONFLICT)
    else:
        message = f"({timeout}) must be more than LOW_TIMEOUT_THRESHOLD ({threshold}, the default)"
        reader.fail(f"{path}['TIMEOUT']", message, hint, code=CONFLICT)


def _sharing(path: str, strategy: StrategySpec) -> tuple[str, int] | None:
    """Where a strategy splits the call's deadline, and among how many attempts its first attempt
    shares it, as split_deadline_between_attempts divides (strategies/deadline_providers.py): attempt
    0 of a sequential strategy gets 1/sharing of the time left, sharing being ATTEMPTS_COUNT or, if
    smaller, ATTEMPTS_COUNT_TO_SPLIT (1: the whole of it). retry_until_deadline_expired gives its
    STRATEGY the whole deadline, so its first attempt is that strategy's. None: no split."""
    if strategy.name == "retry_until_deadline_expired" and strategy.inner is not None:
        return _sharing(f"{path}['STRATEGY']", strategy.inner)
    if strategy.name != "sequential" or not strategy.split_deadline:
        return None
    count, to_split = strategy.attempts_count, strategy.attempts_count_to_split
    sharing = count if to_split is None else min(to_split, count)
    return (f"{path}['DEADLINE_PROVIDER']", sharing) if sharing > 1 else None


def _check_threshold_below_first_share(
    reader: Reader, path: str, strategy: StrategySpec | None, timeout: float | None, threshold: float | None
) -> None:
    """A strategy that splits the deadline must leave its first attempt more than LOW_TIMEOUT_THRESHOLD
    of TIMEOUT: TIMEOUT 0.25 split among 3 attempts gives attempt 0 0.083 s, and with a threshold of
    0.1 it was answered 408 with X-Do-Not-Retry, so a call with no deadline of its own never sent
    anything, and the check said nothing. (A threshold not below TIMEOUT itself is told once, at
    that key: _check_threshold_below_timeout.)"""
    if strategy is None or timeout is None or threshold is None or threshold >= timeout:
        return
    split = _sharing(path, strategy)
    if split is None:
        return
    where, sharing = split
    share = timeout / sharing
    if threshold < share:
        return
    reader.fail(
        where,
        f"splits TIMEOUT ({timeout}) among {sharing} attempts: the first gets {share:.6g} s, not more than"
        f" LOW_TIMEOUT_THRESHOLD ({threshold})",
        "an attempt with less time left than LOW_TIMEOUT_THRESHOLD is answered 408 (X-Do-Not-Retry) without"
        " being sent, so a call with no deadline of its own would send none: raise TIMEOUT, lower"
        " LOW_TIMEOUT_THRESHOLD, or split among fewer attempts (ATTEMPTS_COUNT_TO_SPLIT)",
        code=CONFLICT,
    )


@dataclasses.dataclass(frozen=True)
class SheddingSettings:
    """``AIO_REQUEST["SHEDDING"]``, validated: plain data (``server/shedding/`` builds the limiter from it)."""

    max_concurrency: int | None = None  # a fixed limit; None: learned from latency within MIN/MAX_LIMIT
    min_limit: int = 1
    max_limit: int = 1000
    latency_tolerance: float = 1.5
    probe_interval: float = 30.0
    queue_timeout: float = 0.5
    # Also the time a refusal after a wait needs to reach its caller before the caller gives up: at
    # 0.0, a wait ended by the deadline sent its 503 (X-Do-Not-Retry) 1 ms before it, and callers,
    # ours and aio-request's, had ended with a 408 of their own, counted as a failure (a review).
    min_time_to_serve: float = 0.01
    retry_after: int = 1
    priority_policy: Any = "any"  # "any", "known_services" or a callable (request, claimed) -> Priority
    untrusted_priority: Priority = Priority.NORMAL
    switch_interval: float | None = 0.002  # sys.setswitchinterval() when the limiter is built; None: left alone


@dataclasses.dataclass(frozen=True)
class AioRequestSettings:
    service_name: str | None
    clients: Mapping[str, ClientSpec]
    # the server side (AioRequestMiddleware)
    timeout: float = DEFAULT_SERVER_TIMEOUT
    priority: Priority = DEFAULT_SERVER_PRIORITY
    max_timeout: float = DEFAULT_MAX_TIMEOUT
    low_timeout_threshold: float = DEFAULT_SERVER_LOW_TIMEOUT_THRESHOLD
    cancel_async_views_on_timeout: bool = False
    database_statement_timeout: bool = False
    circuit_breaker_state: str = LOCAL_BREAKER_STATE
    known_services: frozenset[str] | None = None  # lower-cased; None: any name, bounded per process
    circuit_breaker_publish_interval: float = 1.0
    circuit_breaker_history_days: float = 7.0
    shedding: SheddingSettings | None = None  # AIO_REQUEST["SHEDDING"]; None: no load shedding
    # Read while a module a dotted path names was still being imported (conf/reader.py's Deferred):
    # not kept, and the clients made from it go if the next read finds the settings invalid.
    provisional: bool = False


def _shedding(reader: Reader, path: str, value: Any, known: frozenset[str] | None) -> SheddingSettings | None:
    """``AIO_REQUEST["SHEDDING"]``: True or a dict turns load shedding on (see docs/budgets-and-shedding.md)."""
    if value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        # "must be a dict" alone (reader.mapping's words) hid that True, False and None are taken too.
        reader.fail(
            path,
            f"must be True, False, None or a dict, not {shown(value)}",
            "True for load shedding with the defaults, False or None for none, or a dict with "
            + ", ".join(SHEDDING_KEYS),
        )
        return None
    removed = [key for key in _REMOVED_SHEDDING_KEYS if key in value]
    for key in removed:
        reader.fail(
            f"{path}[{key!r}]",
            "was removed: the priority queue keeps slots for higher priorities at any limit",
            "delete it; PRIORITY_POLICY controls who may claim high priority",
        )
    spec = reader.mapping(path, value, (*SHEDDING_KEYS, *removed))
    if spec is None:
        return None
    errors = reader.errors
    got = fields(reader, path, spec, SHEDDING_SCHEMA)
    if got["MAX_CONCURRENCY"] is not None:
        for key in ("MIN_LIMIT", "MAX_LIMIT", "LATENCY_TOLERANCE", "PROBE_INTERVAL"):
            if key in spec:
                reader.fail(
                    f"{path}[{key!r}]",
                    "applies to the adaptive limit, and MAX_CONCURRENCY sets a fixed one",
                    "set MAX_CONCURRENCY for a fixed limit, or MIN_LIMIT/MAX_LIMIT to bound the adaptive one",
                    code=CONFLICT,
                )
    low, high = got["MIN_LIMIT"], got["MAX_LIMIT"]
    if low is not None and high is not None and low > high:
        reader.fail(f"{path}['MIN_LIMIT']", f"({low}) must not exceed MAX_LIMIT ({high})", code=CONFLICT)
    if got["PRIORITY_POLICY"] == "known_services" and not known:
        reader.fail(
            f"{path}['PRIORITY_POLICY']",
            "is 'known_services' but AIO_REQUEST['KNOWN_SERVICES'] is not set",
            "list the services whose X-Service-Name may claim any priority in KNOWN_SERVICES",
            code=CONFLICT,
        )
    if reader.errors > errors:
        return None
    return SheddingSettings(**{key.lower(): value for key, value in got.items()})


def _server(reader: Reader, top: Mapping[str, Any]) -> dict[str, Any] | None:
    """The server-side keys, checked one by one and then against each other."""
    got = fields(reader, "", top, SERVER_SCHEMA)
    # The pairs are compared when both values are valid, whatever else is wrong: every problem at once.
    ok = None not in got.values()
    timeout, max_timeout, threshold = got["TIMEOUT"], got["MAX_TIMEOUT"], got["LOW_TIMEOUT_THRESHOLD"]
    if timeout is not None and max_timeout is not None and timeout > max_timeout:
        given = "" if "TIMEOUT" in top else ", the default"
        reader.fail(
            "['TIMEOUT']",
            f"({timeout}{given}) must not exceed MAX_TIMEOUT ({max_timeout})",
            "MAX_TIMEOUT caps incoming X-Request-Timeout values; TIMEOUT is used when a request has none",
            code=CONFLICT,
        )
        ok = False
    if timeout is not None and threshold is not None and threshold >= timeout:
        reader.fail(
            "['LOW_TIMEOUT_THRESHOLD']",
            f"({threshold}) must be less than TIMEOUT ({timeout})",
            "requests with less time left than LOW_TIMEOUT_THRESHOLD are answered 408 without running the view",
            code=CONFLICT,
        )
        ok = False
    return got if ok else None


MAX_SERVICE_NAME_LENGTH = h.MAX_SERVICE_NAME_LENGTH


def _storable(name: str) -> bool:
    """Whether a database's text column can hold ``name``: UTF-8 and no NUL."""
    if "\x00" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_service_name(reader: Reader, service_name: object) -> None:
    """``SERVICE_NAME``: sent as ``X-Service-Name`` on every call, and read by the servers called."""
    if not isinstance(service_name, str) or not service_name.strip():
        reader.fail("['SERVICE_NAME']", f"must be a non-empty string, not {shown(service_name)}")
    elif len(service_name) > MAX_SERVICE_NAME_LENGTH:
        reader.fail(
            "['SERVICE_NAME']",
            f"is longer than {MAX_SERVICE_NAME_LENGTH} characters ({len(service_name)}): servers running this "
            "app count such a caller as 'other' in their metrics",
        )
    else:
        try:
            check_headers({h.X_SERVICE_NAME: service_name})  # sent on every call: it must fit in a header
        except ValueError as error:
            reader.fail("['SERVICE_NAME']", str(error).replace(f"header {h.X_SERVICE_NAME!r}: the value ", ""))
        else:
            if not (service_name.isascii() and service_name.isprintable()):
                # A header carries Latin-1 and tabs, but a server running this app takes such a name for
                # no service (core.headers.service_name), as KNOWN_SERVICES refuses it: "café" passed
                # the check and was counted as "other" and never trusted, as a name too long is.
                reader.fail(
                    "['SERVICE_NAME']",
                    f"must be printable ASCII, not {shown(service_name)}: servers running this app count"
                    " such a caller as 'other' in their metrics and never trust it for a priority",
                )


def read_settings(value: Any) -> tuple[AioRequestSettings | None, list[Problem]]:
    """Validate the value of ``settings.AIO_REQUEST``: the settings (None if any error) and every problem."""
    reader = Reader()
    value = _without_lazy_strings(value, {}, reader, "")
    # An unset AIO_REQUEST is read as {} by its callers; None written out is no setting of its own:
    # passed as if unset, a settings file that meant to turn something off (or lost its dict to a
    # bad merge) got the defaults with nothing said.
    none_hint = "leave AIO_REQUEST unset (or set {}) for the defaults" if value is None else None
    top = reader.mapping("", value, TOP_LEVEL_KEYS, none_hint)
    if top is None:
        reader.settle()
        return None, reader.problems
    service_name = top.get("SERVICE_NAME")
    if service_name is not None:
        _check_service_name(reader, service_name)
    clients: dict[str, ClientSpec] = {}
    clients_hint = "a dict of the clients by name, e.g. {'billing': {'ENDPOINT': 'http://billing:8080/'}}"
    listed = reader.mapping("['CLIENTS']", top.get("CLIENTS", {}), None, clients_hint)
    for name, client_value in (listed or {}).items():
        path = f"['CLIENTS'][{shown(name)}]"
        storable = isinstance(name, str) and _storable(name)
        valid_name = isinstance(name, str) and 0 < len(name) <= CLIENT_NAME_LENGTH and storable
        if not isinstance(name, str) or not name:
            reader.fail(path, "is not a valid client name: use a non-empty string")
        elif len(name) > CLIENT_NAME_LENGTH:  # admin's tables: a longer one failed every publishing round
            cut = shown(name)  # hidden first, then cut: a cut before its "@" hid nothing
            path = f"['CLIENTS'][{cut[:41] + cut[0] if len(cut) > 42 else cut}...]"
            reader.fail(path, f"is a client name longer than {CLIENT_NAME_LENGTH} characters")
        elif not storable:
            # Admin's tables again: PostgreSQL's text holds no NUL, and a lone surrogate is no UTF-8.
            # Every publishing round of the process failed at its first query, so its other clients
            # left admin too and their overrides were never obeyed.
            reader.fail(
                path, "is a client name with a NUL character or a lone surrogate, which a database cannot store"
            )
        # The entry is read with a bad name too: its own problems are reported with the name's.
        spec = _client(reader, name if isinstance(name, str) else shown(name), client_value, path)
        if valid_name and spec is not None:
            clients[name] = spec
    server = _server(reader, top)
    if server is not None:
        _short_shared_sampling(reader, server["CIRCUIT_BREAKER_STATE"], clients)
    known = (
        names(reader, "['KNOWN_SERVICES']", top["KNOWN_SERVICES"]) if top.get("KNOWN_SERVICES") is not None else None
    )
    shedding = _shedding(reader, "['SHEDDING']", top["SHEDDING"], known) if top.get("SHEDDING") is not None else None
    reader.settle()
    if server is None or any(not p.warning for p in reader.problems):
        return None, reader.problems
    return AioRequestSettings(
        service_name=service_name,
        clients={
            name: dataclasses.replace(spec, circuit_breaker_state=server["CIRCUIT_BREAKER_STATE"])
            for name, spec in clients.items()
        },
        known_services=known,
        shedding=shedding,
        provisional=reader.provisional,
        **{key.lower(): value for key, value in server.items()},  # SERVER_SCHEMA's keys name the fields
    ), reader.problems


#: The shortest ``SAMPLING_DURATION`` of a breaker sharing its counts through a cache: ten of its
#: store's sync rounds (``breaker/cache_store.py``). An outcome reaches the other processes one or two
#: rounds (0.1-0.2 s) after it is made, and counts there only for what is left of the sampling period:
#: measured on a real Redis, another process's failures counted for 16% of them at 0.1 s, 23-32% at
#: 0.2 s, 77% at 0.5 s and 87% at 1 s (tests/breaker/test_cache_store.py::
#: test_a_sampling_period_of_a_few_sync_rounds_counts_little_of_another_process_s_outcomes).
SHARED_SAMPLING_FLOOR = 10 * DEFAULT_SYNC_INTERVAL


def _short_shared_sampling(reader: Reader, state: str | None, clients: Mapping[str, "ClientSpec"]) -> None:
    """Warn of each breaker whose counts are shared (``CIRCUIT_BREAKER_STATE`` a shared cache) over a
    sampling period too short for the other processes' outcomes to count: such breakers passed the
    check and then each process tripped on its own outcomes alone, as if nothing were shared."""
    from django.conf import settings

    caches = getattr(settings, "CACHES", None)
    cache = caches.get(state) if isinstance(caches, Mapping) and state is not None else None
    if (
        not isinstance(cache, Mapping)
        or nearest_known(str(cache.get("BACKEND", "")), PER_PROCESS_CACHES) in PER_PROCESS_CACHES
    ):
        return  # "local", or a cache each process keeps apart (W002 says so): nothing is shared
    for name, spec in clients.items():
        sampling = SHARED_SAMPLING_FLOOR if spec.circuit_breaker is None else spec.circuit_breaker["sampling_duration"]
        if sampling >= SHARED_SAMPLING_FLOOR:
            continue
        reader.problems.append(
            Problem(
                f"['CLIENTS'][{shown(name)}]['CIRCUIT_BREAKER']['SAMPLING_DURATION']",
                f"is {sampling:g} s while CIRCUIT_BREAKER_STATE shares the counts through cache {state!r}: another"
                f" process's outcomes reach this one {DEFAULT_SYNC_INTERVAL:g}-{2 * DEFAULT_SYNC_INTERVAL:g} s after"
                " they are made and count only for the rest of the period (a quarter to a third of them at"
                " 0.2 s), so each process trips mostly on its own",
                f"use a SAMPLING_DURATION of at least {SHARED_SAMPLING_FLOOR:g} s",
                warning=True,
                code=SHORT_SHARED_SAMPLING,
            )
        )


def _without_lazy_strings(value: Any, made: dict[int, tuple[Any, Any]], reader: Reader, path: str) -> Any:
    """A copy of ``value`` (its mappings as dicts, its lists, tuples and sets as such) with every lazy string
    (``gettext_lazy``, ``lazy(..., str)``) in it, key or value, made the text it stands for. A lazy
    string is no ``str``, and printed like one: it was refused with messages that contradicted
    themselves (``['PRIORITY'] is 'high', not a priority``). ``made`` keeps a mapping or list that
    holds itself from looping (its copy holds itself as the original did): by ``id()``, with the
    original kept beside its copy, so that its ``id()`` names no other object while the copy is made.
    A mapping whose entries are made as they are read (each a new object, freed once read) had its
    entries' ids reused, and an entry was handed the copy of an earlier one: another client's
    ENDPOINT, without a word.

    A mapping whose look-up of a key raises (one backed by a secrets store) is an E099 at that key,
    read as missing, at ``path`` (where ``value`` is in the setting); one whose keys cannot be listed,
    an E099 where it is. The error made the whole read one E099 naming no key, which hid every other
    problem of the setting (a review)."""
    from django.utils.functional import Promise

    if isinstance(value, Promise):
        return str(value)
    seen = made.get(id(value))
    if seen is not None:
        return seen[1]
    if isinstance(value, Mapping):
        try:
            keys = list(value)
        except Exception as error:
            _unreadable(reader, path, error)
            return Unlisted()
        copy: dict[Any, Any] = {}
        made[id(value)] = (value, copy)
        for key in keys:
            where = f"{path}[{shown(key)}]"
            try:
                item = value[key]
            except Exception as error:
                _unreadable(reader, where, error)
                continue
            copy[_without_lazy_strings(key, made, reader, where)] = _without_lazy_strings(item, made, reader, where)
        return copy
    if isinstance(value, list):
        items: list[Any] = []
        made[id(value)] = (value, items)
        items.extend(_without_lazy_strings(item, made, reader, f"{path}[{n}]") for n, item in enumerate(value))
        return items
    if isinstance(value, tuple):
        return tuple(_without_lazy_strings(item, made, reader, f"{path}[{n}]") for n, item in enumerate(value))
    if isinstance(value, set | frozenset):  # KNOWN_SERVICES may be one: its lazy names were refused
        return type(value)(_without_lazy_strings(item, made, reader, path) for item in value)
    return value


def _unreadable(reader: Reader, path: str, error: Exception) -> None:
    reader.unreadable.append(path)
    reader.fail(
        path,
        f"could not be read: {type(error).__name__}: {error_text(error)}",
        "the mapping holding it raised this when it was read",
        code=UNEXPECTED,
    )

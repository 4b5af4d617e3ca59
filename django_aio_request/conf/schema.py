"""Reading and validating ``settings.AIO_REQUEST``.

One reader serves both the system checks (which report every problem at once) and the clients
registry (which refuses to build a client from settings with problems), so the two can never
disagree about what is valid.
"""

import dataclasses
import math
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from django_aio_request.breaker.circuit_breaker import CircuitStore, DefaultCircuitBreaker
from django_aio_request.core.classifier import ResponseClassifier
from django_aio_request.core.client import Client, HedgePriority, validate_hedge_priority
from django_aio_request.core.client_setup import DEFAULT_MAX_WORKERS, setup, validate_endpoint
from django_aio_request.core.priority import Priority
from django_aio_request.core.retry_budget import (
    DEFAULT_MIN_PER_SECOND,
    DEFAULT_RATIO,
    DEFAULT_WINDOW_SECONDS,
    RetryBudget,
)
from django_aio_request.server.shedding import SheddingSettings
from django_aio_request.strategies import (
    RequestStrategy,
    parallel_strategy,
    retry_until_deadline_expired,
    sequential_strategy,
    single_attempt_strategy,
)
from django_aio_request.strategies.deadline_providers import pass_deadline_through, split_deadline_between_attempts
from django_aio_request.strategies.delays import constant_delays, linear_backoff_delays
from django_aio_request.transport.requests_transport import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_SIZE,
    RequestsTransport,
)

SETTING = "AIO_REQUEST"
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
    # priority-aware load shedding in AioRequestMiddleware (shedding.py); None (the default): off
    "SHEDDING",
)
STRATEGY_NAMES = ("single", "sequential", "parallel", "retry_until_deadline_expired")
DELAYS_NAMES = ("constant", "linear_backoff", "percentile")

Factory = Callable[..., Any]  # called with no arguments, but the breaker's with its store


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


class _Reader:
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
Field = Callable[[_Reader, str, Any], Any]


def number(
    minimum: float,
    *,
    inclusive: bool = True,
    below: float | None = None,
    at_most: float | None = None,
    what: str = "a number",
) -> Field:
    def read(reader: _Reader, path: str, value: Any) -> float | None:
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
    def read(reader: _Reader, path: str, value: Any) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            reader.fail(path, f"must be a whole number >= {minimum}, not {value!r}")
            return None
        return value

    return read


def boolean(reader: _Reader, path: str, value: Any) -> bool | None:
    if not isinstance(value, bool):
        reader.fail(path, f"must be True or False, not {value!r}")
        return None
    return value


def optional(field: Field) -> Field:
    """``field``, or None (no limit) when the value is None."""
    return lambda reader, path, value: None if value is None else field(reader, path, value)


def priority(reader: _Reader, path: str, value: Any) -> Priority | None:
    parsed = Priority.parse(value) if isinstance(value, str) else None
    if parsed is None:
        reader.fail(path, f"is {value!r}, not a priority", "allowed: " + ", ".join(p.value for p in Priority))
    return parsed


def names(reader: _Reader, path: str, value: Any) -> frozenset[str] | None:
    """A list of non-empty names, returned lower-cased."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        reader.fail(path, f"must be a list of names, not {type(value).__name__}")
        return None
    bad = [name for name in value if not isinstance(name, str) or not name.strip()]
    if bad:
        reader.fail(path, f"must hold non-empty strings only, not {bad[0]!r}")
        return None
    return frozenset(name.strip().lower() for name in value)


LOCAL_BREAKER_STATE = "local"
# Caches that hold their data in each process: naming one shares nothing between processes.
PER_PROCESS_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


def breaker_state(reader: _Reader, path: str, value: Any) -> str | None:
    """ "local", or the alias of a cache in ``settings.CACHES`` (where every process shares breaker counts)."""
    from django.conf import settings

    aliases = list(getattr(settings, "CACHES", {}) or {})
    allowed = ", ".join(repr(a) for a in [LOCAL_BREAKER_STATE, *aliases])
    if not isinstance(value, str) or not value:
        reader.fail(path, f"must be 'local' or the alias of a cache in settings.CACHES, not {value!r}", allowed)
        return None
    if value == LOCAL_BREAKER_STATE:
        return value
    if value not in aliases:
        reader.fail(path, f"is {value!r}, not 'local' nor a cache in settings.CACHES", "allowed: " + allowed)
        return None
    backend = str(settings.CACHES[value].get("BACKEND", ""))
    if backend in PER_PROCESS_CACHES:
        hint = "use a cache all processes reach, e.g. django.core.cache.backends.redis.RedisCache"
        reader.problems.append(
            Problem(path, f"names cache {value!r} ({backend}), which each process keeps apart", hint, warning=True)
        )
    return value


def dotted(what: str, accept: Callable[[Any], bool]) -> Field:
    def read(reader: _Reader, path: str, value: Any) -> Any:
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
    reader: _Reader, path: str, spec: Mapping[str, Any], schema: Mapping[str, tuple[Field, Any]]
) -> dict[str, Any]:
    """Read every key of ``schema`` (``KEY: (field, default)``) from ``spec``; missing keys take the default."""
    return {key: read(reader, f"{path}[{key!r}]", spec[key]) if key in spec else default
            for key, (read, default) in schema.items()}  # fmt: skip


SECONDS = number(0, inclusive=False, what="a number of seconds")
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
    },
}
CIRCUIT_BREAKER_SCHEMA: dict[str, tuple[Field, Any]] = {
    "BREAK_DURATION": (SECONDS, 5.0),
    "SAMPLING_DURATION": (SECONDS, 10.0),
    "MINIMUM_THROUGHPUT": (integer(1), 10),
    "FAILURE_THRESHOLD": (number(0, inclusive=False, below=1, what="a ratio"), 0.5),
    "WINDOWS_COUNT": (integer(1), 10),
}
RETRY_BUDGET_SCHEMA: dict[str, tuple[Field, Any]] = {
    "RATIO": (number(0, what="a ratio of first attempts"), DEFAULT_RATIO),
    "MIN_PER_SECOND": (number(0, what="a number of extra attempts per second"), DEFAULT_MIN_PER_SECOND),
    "WINDOW_SECONDS": (SECONDS, DEFAULT_WINDOW_SECONDS),
}


def retry_budget(reader: _Reader, path: str, value: Any) -> dict[str, float] | bool | None:
    """A client's ``RETRY_BUDGET``: False (no budget), True (the defaults) or a dict of RETRY_BUDGET_SCHEMA."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, Mapping):
        allowed = "False to turn it off, or a dict with " + ", ".join(RETRY_BUDGET_SCHEMA)
        reader.fail(path, f"must be False or a dict, not {value!r}", allowed)
        return None
    spec = reader.mapping(path, value, tuple(RETRY_BUDGET_SCHEMA))
    got = fields(reader, path, spec or {}, RETRY_BUDGET_SCHEMA)
    return None if None in got.values() else got


def hedge_priority(reader: _Reader, path: str, value: Any) -> HedgePriority:
    """A client's ``HEDGE_PRIORITY``: None, "lower", or a priority."""
    try:
        return validate_hedge_priority(value)
    except ValueError:
        allowed = "None (the call's priority), 'lower' (one step lower), or " + ", ".join(p.value for p in Priority)
        reader.fail(path, f"is {value!r}, not a hedge priority", "allowed: " + allowed)
        return None


def build_retry_budget(value: dict[str, float] | bool) -> RetryBudget | None:
    """A new budget (each client has its own) from a validated ``RETRY_BUDGET``."""
    if value is False:
        return None
    if value is True:
        return RetryBudget()
    return RetryBudget(
        ratio=value["RATIO"], min_per_second=value["MIN_PER_SECOND"], window_seconds=value["WINDOW_SECONDS"]
    )


CLIENT_SCHEMA: dict[str, tuple[Field, Any]] = {
    "TIMEOUT": (SECONDS, 20.0),
    "PRIORITY": (priority, Priority.NORMAL),
    "LOW_TIMEOUT_THRESHOLD": (number(0, what="a number of seconds"), 0.005),
    "EMIT_SYSTEM_HEADERS": (boolean, True),
    "MAX_WORKERS": (integer(1), DEFAULT_MAX_WORKERS),
    "MAX_CONNECTIONS": (integer(1), DEFAULT_MAX_CONNECTIONS),
    "CONNECT_RETRIES": (integer(0), 0),
    "MAX_RESPONSE_SIZE": (optional(integer(0)), DEFAULT_MAX_RESPONSE_SIZE),
    "RESPONSE_CLASSIFIER": (
        dotted("a ResponseClassifier subclass", lambda c: isinstance(c, type) and issubclass(c, ResponseClassifier)),
        None,
    ),
    "REQUEST_ENRICHER": (dotted("a function taking and returning a Request", callable), None),
    # the retry budget (retry_budget.py) and hedges' priority: docs/budgets-and-shedding.md
    "RETRY_BUDGET": (retry_budget, True),
    "HEDGE_PRIORITY": (hedge_priority, None),
}
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
    "CIRCUIT_BREAKER_PUBLISH_INTERVAL": (SECONDS, 1.0),
    "CIRCUIT_BREAKER_HISTORY_DAYS": (number(0, inclusive=False, what="a number of days"), 7.0),
}
SHEDDING_SCHEMA: dict[str, tuple[Field, Any]] = {
    "HIGH_PRIORITY_RESERVE": (number(0, below=1, what="a share of MAX_CONCURRENCY"), 0.2),
    "NORMAL_PRIORITY_RESERVE": (number(0, below=1, what="a share of MAX_CONCURRENCY"), 0.2),
    "MIN_TIME_TO_SERVE": (number(0, what="a number of seconds"), 0.0),
    "RETRY_AFTER": (integer(0), 1),
}
SHEDDING_KEYS = ("MAX_CONCURRENCY", *SHEDDING_SCHEMA)
CLIENT_KEYS = ("ENDPOINT", *CLIENT_SCHEMA, "SAFE_METHOD_STRATEGY", "UNSAFE_METHOD_STRATEGY", "CIRCUIT_BREAKER")


def _delays(reader: _Reader, path: str, value: Any) -> Factory | None:
    name = reader.named(path, value, DELAYS_NAMES)
    if name is None:
        return None
    schema = DELAYS_SCHEMAS[name]
    spec = reader.mapping(path, value, ("NAME", *schema))
    if spec is None:
        return None
    got = fields(reader, path, spec, schema)
    if None in got.values():
        return None
    if name == "constant":
        return lambda: constant_delays(delay=got["DELAY"])
    if name == "linear_backoff":
        return lambda: linear_backoff_delays(
            min_delay_seconds=got["MIN_DELAY_SECONDS"], delay_multiplier=got["DELAY_MULTIPLIER"], jitter=got["JITTER"]
        )
    if got["MIN_DELAY_SECONDS"] > got["MAX_DELAY_SECONDS"]:
        reader.fail(f"{path}['MIN_DELAY_SECONDS']", "must not exceed MAX_DELAY_SECONDS")
        return None
    from django_aio_request.strategies.percentile_delays import PercentileDelaysProvider

    return lambda: PercentileDelaysProvider(
        percentile=got["PERCENTILE"],
        min_delay_seconds=got["MIN_DELAY_SECONDS"],
        max_delay_seconds=got["MAX_DELAY_SECONDS"],
        window_seconds=got["WINDOW_SECONDS"],
    )


def _deadline_provider(reader: _Reader, path: str, value: Any) -> Factory | None:
    name = reader.named(path, value, ("pass_through", "split"))
    spec = reader.mapping(path, value, ("NAME", "ATTEMPTS_COUNT_TO_SPLIT")) if name else None
    if spec is None:
        return None
    if name == "pass_through":
        return pass_deadline_through
    split = fields(reader, path, spec, {"ATTEMPTS_COUNT_TO_SPLIT": (integer(2), 0)})["ATTEMPTS_COUNT_TO_SPLIT"]
    if split is None:
        return None
    return lambda: split_deadline_between_attempts(attempts_count_to_split=split or None)


def _strategy(reader: _Reader, path: str, value: Any) -> Callable[[], RequestStrategy] | None:
    name = reader.named(path, value, STRATEGY_NAMES)
    allowed = {
        "single": ("NAME",),
        "sequential": ("NAME", "ATTEMPTS_COUNT", "DELAYS", "DEADLINE_PROVIDER"),
        "parallel": ("NAME", "ATTEMPTS_COUNT", "DELAYS"),
        "retry_until_deadline_expired": ("NAME", "STRATEGY", "DELAYS"),
    }
    spec = reader.mapping(path, value, allowed[name]) if name else None
    if spec is None:
        return None
    if name == "single":
        return single_attempt_strategy
    delays = _delays(reader, f"{path}['DELAYS']", spec["DELAYS"]) if "DELAYS" in spec else linear_backoff_delays
    if name == "retry_until_deadline_expired":
        if "STRATEGY" not in spec:
            reader.fail(f"{path}['STRATEGY']", "is required: the strategy to repeat")
            return None
        inner = _strategy(reader, f"{path}['STRATEGY']", spec["STRATEGY"])
        if inner is None or delays is None:
            return None
        return lambda: retry_until_deadline_expired(inner(), delays_provider=delays())
    attempts = fields(reader, path, spec, {"ATTEMPTS_COUNT": (integer(1), 3)})["ATTEMPTS_COUNT"]
    if name == "parallel":
        if attempts is None or delays is None:
            return None
        return lambda: parallel_strategy(attempts_count=attempts, delays_provider=delays())
    deadlines = (
        _deadline_provider(reader, f"{path}['DEADLINE_PROVIDER']", spec["DEADLINE_PROVIDER"])
        if "DEADLINE_PROVIDER" in spec
        else pass_deadline_through
    )
    if attempts is None or delays is None or deadlines is None:
        return None
    return lambda: sequential_strategy(attempts_count=attempts, delays_provider=delays(), deadline_provider=deadlines())


def _circuit_breaker(reader: _Reader, path: str, value: Any) -> Factory | None:
    spec = reader.mapping(path, value, tuple(CIRCUIT_BREAKER_SCHEMA))
    if spec is None:
        return None
    got = fields(reader, path, spec, CIRCUIT_BREAKER_SCHEMA)
    if None in got.values():
        return None

    def make(store: CircuitStore[str] | None = None) -> DefaultCircuitBreaker[str, Any]:
        return DefaultCircuitBreaker(store=store, **{key.lower(): v for key, v in got.items()})

    return make


def _endpoint(reader: _Reader, path: str, spec: Mapping[str, Any]) -> str | None:
    if "ENDPOINT" not in spec:
        reader.fail(path, "is required", "the absolute URL of the service, e.g. 'http://billing:8080/'")
        return None
    try:
        endpoint = validate_endpoint(spec["ENDPOINT"])
    except ValueError as error:
        reader.fail(path, str(error))
        return None
    if not urllib.parse.urlsplit(endpoint).path.endswith("/"):
        hint = "relative request URLs replace the endpoint's last path segment (RFC 3986); add a trailing '/'"
        reader.problems.append(Problem(path, "does not end with '/'", hint, warning=True))
    return endpoint


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """A validated client entry; ``build()`` makes a new client, with fresh state, each time."""

    name: str
    endpoint: str
    options: Mapping[str, Any]
    factories: Mapping[str, Factory]

    circuit_breaker_state: str = LOCAL_BREAKER_STATE  # AIO_REQUEST["CIRCUIT_BREAKER_STATE"]

    def build(self, service_name: str | None) -> Client:
        o = self.options
        made = {key: make() for key, make in self.factories.items() if key != "circuit_breaker"}
        if "circuit_breaker" in self.factories:
            store = None
            if self.circuit_breaker_state != LOCAL_BREAKER_STATE:
                from django_aio_request.breaker.cache_store import CacheCircuitStore

                store = CacheCircuitStore(self.circuit_breaker_state, namespace=self.name)
            made["circuit_breaker"] = self.factories["circuit_breaker"](store)
        return setup(
            endpoint=self.endpoint,
            transport=RequestsTransport(
                max_connections=o["MAX_CONNECTIONS"],
                connect_retries=o["CONNECT_RETRIES"],
                max_response_size=o["MAX_RESPONSE_SIZE"],
            ),
            timeout=o["TIMEOUT"],
            priority=o["PRIORITY"],
            low_timeout_threshold=o["LOW_TIMEOUT_THRESHOLD"],
            emit_system_headers=o["EMIT_SYSTEM_HEADERS"],
            max_workers=o["MAX_WORKERS"],
            request_enricher=o["REQUEST_ENRICHER"],
            service_name=service_name,
            retry_budget=build_retry_budget(o["RETRY_BUDGET"]),
            hedge_priority=o["HEDGE_PRIORITY"],
            **made,
        )


def _client(reader: _Reader, name: str, value: Any) -> ClientSpec | None:
    path = f"['CLIENTS'][{name!r}]"
    spec = reader.mapping(path, value, CLIENT_KEYS)
    if spec is None:
        return None
    errors_before = sum(not p.warning for p in reader.problems)
    endpoint = _endpoint(reader, f"{path}['ENDPOINT']", spec)
    options = fields(reader, path, spec, CLIENT_SCHEMA)
    factories: dict[str, Factory | None] = {}
    for key, option in (
        ("SAFE_METHOD_STRATEGY", "safe_method_strategy"),
        ("UNSAFE_METHOD_STRATEGY", "unsafe_method_strategy"),
    ):
        if key in spec:
            factories[option] = _strategy(reader, f"{path}[{key!r}]", spec[key])
    if spec.get("CIRCUIT_BREAKER") is not None:
        factories["circuit_breaker"] = _circuit_breaker(reader, f"{path}['CIRCUIT_BREAKER']", spec["CIRCUIT_BREAKER"])
    classifier = options.pop("RESPONSE_CLASSIFIER")
    if classifier is not None:
        factories["response_classifier"] = classifier
    if endpoint is None or sum(not p.warning for p in reader.problems) > errors_before:
        return None
    return ClientSpec(name, endpoint, options, {k: f for k, f in factories.items() if f is not None})


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


def _shedding(reader: _Reader, path: str, value: Any) -> SheddingSettings | None:
    """``AIO_REQUEST["SHEDDING"]``: a dict that turns load shedding on (see docs/budgets-and-shedding.md)."""
    spec = reader.mapping(path, value, SHEDDING_KEYS)
    if spec is None:
        return None
    errors_before = sum(not p.warning for p in reader.problems)
    limit = spec.get("MAX_CONCURRENCY")
    if limit is None:
        hint = "the most requests this process serves at once; e.g. its threads, or what its CPU and database sustain"
        reader.fail(f"{path}['MAX_CONCURRENCY']", "is required when SHEDDING is set", hint)
    else:
        limit = integer(1)(reader, f"{path}['MAX_CONCURRENCY']", limit)
    got = fields(reader, path, spec, SHEDDING_SCHEMA)
    high, normal = got["HIGH_PRIORITY_RESERVE"], got["NORMAL_PRIORITY_RESERVE"]
    if high is not None and normal is not None and high + normal >= 1:
        reader.fail(
            f"{path}['NORMAL_PRIORITY_RESERVE']",
            f"({normal}) plus HIGH_PRIORITY_RESERVE ({high}) must be less than 1",
            "the rest of MAX_CONCURRENCY is what low-priority requests may use",
        )
    if limit is None or sum(not p.warning for p in reader.problems) > errors_before:
        return None
    return SheddingSettings(
        max_concurrency=limit,
        high_priority_reserve=high,
        normal_priority_reserve=normal,
        min_time_to_serve=got["MIN_TIME_TO_SERVE"],
        retry_after=got["RETRY_AFTER"],
    )


def _server(reader: _Reader, top: Mapping[str, Any]) -> dict[str, Any] | None:
    """The server-side keys, checked one by one and then against each other."""
    got = fields(reader, "", top, SERVER_SCHEMA)
    if None in got.values():
        return None
    timeout, max_timeout, threshold = got["TIMEOUT"], got["MAX_TIMEOUT"], got["LOW_TIMEOUT_THRESHOLD"]
    ok = True
    if timeout > max_timeout:
        given = "" if "TIMEOUT" in top else ", the default"
        reader.fail(
            "['TIMEOUT']",
            f"({timeout}{given}) must not exceed MAX_TIMEOUT ({max_timeout})",
            "MAX_TIMEOUT caps incoming X-Request-Timeout values; TIMEOUT is used when a request has none",
        )
        ok = False
    if threshold >= timeout:
        reader.fail(
            "['LOW_TIMEOUT_THRESHOLD']",
            f"({threshold}) must be less than TIMEOUT ({timeout})",
            "requests with less time left than LOW_TIMEOUT_THRESHOLD are answered 408 without running the view",
        )
        ok = False
    return got if ok else None


def read_settings(value: Any) -> tuple[AioRequestSettings | None, list[Problem]]:
    """Validate the value of ``settings.AIO_REQUEST``: the settings (None if any error) and every problem."""
    reader = _Reader()
    top = reader.mapping("", {} if value is None else value, TOP_LEVEL_KEYS)
    if top is None:
        return None, reader.problems
    service_name = top.get("SERVICE_NAME")
    if service_name is not None and (not isinstance(service_name, str) or not service_name.strip()):
        reader.fail("['SERVICE_NAME']", f"must be a non-empty string, not {service_name!r}")
    clients: dict[str, ClientSpec] = {}
    for name, client_value in (reader.mapping("['CLIENTS']", top.get("CLIENTS", {}), None) or {}).items():
        if not isinstance(name, str) or not name:
            reader.fail(f"['CLIENTS'][{name!r}]", "is not a valid client name: use a non-empty string")
        elif (spec := _client(reader, name, client_value)) is not None:
            clients[name] = spec
    server = _server(reader, top)
    known = (
        names(reader, "['KNOWN_SERVICES']", top["KNOWN_SERVICES"]) if top.get("KNOWN_SERVICES") is not None else None
    )
    shedding = _shedding(reader, "['SHEDDING']", top["SHEDDING"]) if top.get("SHEDDING") is not None else None
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
        **{key.lower(): value for key, value in server.items()},  # SERVER_SCHEMA's keys name the fields
    ), reader.problems

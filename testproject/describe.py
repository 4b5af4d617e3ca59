"""The demo's Clients page in words: a client's strategies and settings as a person reads them, and
what billing answered, instead of Python reprs, raw dicts and ``None``."""

from collections.abc import Mapping
from typing import Any

from django_aio_request.conf.schema import ClientSpec, DelaysSpec, StrategySpec
from django_aio_request.core.priority import Priority


def seconds(value: float) -> str:
    """``"2 s"``, ``"1.5 s"``, ``"50 ms"``."""
    if value < 1:
        return f"{value * 1000:g} ms"
    return f"{value:g} s"


def delays(spec: DelaysSpec | None, first: str) -> str:
    """How long the next attempt waits; ``first`` names what it waits after ("the previous one")."""
    if spec is None:  # the default: linear backoff from 0, 50 ms more per attempt, 20% jitter
        return f"each after {first} by 50 ms more per attempt (±20%)"
    options = spec.options
    if spec.name == "constant":
        return f"each {seconds(options['DELAY'])} after {first}"
    if spec.name == "linear_backoff":
        start = options["MIN_DELAY_SECONDS"]
        return (
            f"each after {first} by {seconds(start) + ' plus ' if start else ''}"
            f"{seconds(options['DELAY_MULTIPLIER'])} more per attempt (±{options['JITTER']:.0%})"
        )
    return (
        f"each after {first} by the {options['PERCENTILE']:.0%} percentile of the last "
        f"{seconds(options['WINDOW_SECONDS'])} of latencies (between {seconds(options['MIN_DELAY_SECONDS'])} and "
        f"{seconds(options['MAX_DELAY_SECONDS'])})"
    )


def strategy(spec: StrategySpec | None, *, safe: bool) -> str:
    """One sentence for ``SAFE_METHOD_STRATEGY`` / ``UNSAFE_METHOD_STRATEGY`` (``None``: the default)."""
    if spec is None:
        return "up to 3 attempts, one after another" if safe else "a single attempt"
    if spec.name == "single":
        return "a single attempt"
    if spec.name == "sequential":
        text = f"up to {spec.attempts_count} attempts, one after another, {delays(spec.delays, 'a failure')}"
        if spec.split_deadline:
            text += "; the deadline is split between them"
        return text
    if spec.name == "parallel":
        return (
            f"hedged: up to {spec.attempts_count} attempts at once, {delays(spec.delays, 'the previous one')} "
            "unless an answer came; the first good answer wins"
        )
    inner = strategy(spec.inner, safe=safe)
    return f"{inner}, repeated until the deadline, {delays(spec.delays, 'a failure')}"


def settings(spec: ClientSpec) -> list[str]:
    """The settings that shape a call, one phrase each."""
    options: Mapping[str, Any] = spec.options
    found = [f"timeout {seconds(options['TIMEOUT'])}"]
    if options["PRIORITY"] is not Priority.NORMAL:
        found.append(f"priority {options['PRIORITY'].value}")
    breaker = spec.circuit_breaker
    if breaker is None:
        found.append("no circuit breaker")
    else:
        found.append(
            f"circuit breaker: opens when {breaker['failure_threshold']:.0%} of at least "
            f"{breaker['minimum_throughput']} calls in {seconds(breaker['sampling_duration'])} fail, "
            f"for {seconds(breaker['break_duration'])}; then one call probes"
        )
    budget = options["RETRY_BUDGET"]
    if budget is False:
        found.append("no retry budget")
    elif budget is True:
        found.append("retry budget: retries and hedges up to 20% of first attempts (+10 a second)")
    else:
        found.append(
            f"retry budget: retries and hedges up to {budget['RATIO']:.0%} of first attempts "
            f"(+{budget['MIN_PER_SECOND']:g} a second)"
        )
    return found


_BREAKER = "no answer from billing: the circuit breaker answered"
_FORCED_OPEN = "forced open in admin, it never probes: no call goes out until the override is lifted there"
_OPEN = "open by itself, it lets one attempt through now and then, to probe"


def received(body: object, status: int, from_breaker: bool, breaker_state: str | None = None) -> str:
    """What billing's simulated service said it received, or why there is nothing to show.

    ``breaker_state`` is the state of the client's circuit as the page's breaker column shows it
    ("open", "half open", "forced open"); without it, an answer of the breaker is explained for each
    state it may be in."""
    if from_breaker:
        # The call's answer is the breaker's; an attempt it let through as a probe may have reached
        # billing meanwhile (a probe that timed out, while a hedge was refused): "nothing" said billing
        # received nothing where it had received the probe (a review). A circuit forced open in admin
        # never probes: the page said it did (a review).
        state = (breaker_state or "").replace("_", " ")
        if state == "forced open":
            return f"{_BREAKER}: {_FORCED_OPEN}"
        if state in ("open", "half open"):
            return f"{_BREAKER}: {_OPEN}"
        return f"{_BREAKER} (the breaker column says how it is open): {_FORCED_OPEN}; {_OPEN}"
    if isinstance(body, Mapping) and isinstance(body.get("received"), Mapping):
        got = body["received"]
        parts = [
            f"a deadline of {got.get('timeout')} s" if got.get("timeout") else "no deadline",
            f"priority {got.get('priority')}" if got.get("priority") else "no priority",
        ]
        if got.get("caller"):
            parts.append(f"from {got['caller']}")
        slept = body.get("slept") or 0
        if slept:
            parts.append(f"and took {seconds(float(slept))}")
        return ", ".join(parts)
    if isinstance(body, Mapping) and body.get("error"):
        return f"{body['error']} ({status})"
    if status == 408:
        return "no answer before the deadline"
    return f"status {status}, no readable body"

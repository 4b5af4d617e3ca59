"""The breaker state gauge as a server's /metrics shows it (tests that run servers' worker processes)."""

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()  # type: ignore[no-any-return]


def breaker_states(url: str, endpoint: str) -> dict[str, float]:
    """The breaker state gauge of ``endpoint``'s breakers on ``url``'s /metrics, summed over its series."""
    got: dict[str, float] = {}
    for family in text_string_to_metric_families(get(url + "metrics").decode()):
        for sample in family.samples:
            if sample.name == "aio_request_circuit_breaker_state" and sample.labels["request_endpoint"] == endpoint:
                got[sample.labels["state"]] = got.get(sample.labels["state"], 0) + sample.value
    return {state: got.get(state, 0.0) for state in ("closed", "open", "half_open")}


def until_both_workers_served(url: str, deadline: float) -> None:
    """Send ``/pid`` requests, two at a time and slow enough, until two worker processes have answered."""
    served: set[bytes] = set()
    while len(served) < 2:
        assert time.monotonic() < deadline, "one worker served everything"
        with ThreadPoolExecutor(2) as pool:
            served |= set(pool.map(get, [url + "pid?sleep=0.2"] * 4))

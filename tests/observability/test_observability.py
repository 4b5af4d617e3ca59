"""The shipped Grafana dashboard and Prometheus alerts (observability/) against the real metrics.

- promtool (Debian's ``prometheus`` package) checks the alerting rules and runs their unit tests
  (observability/alerts.test.yml), and parses every query of the dashboard;
- real calls (hedged, failing until a breaker opens, refused by a spent retry budget, past their
  deadline) are made through named clients to a loopback server and to this process's own live
  server, then every metric name and label each query uses must be on ``/metrics``;
- a real Prometheus started on loopback scrapes that ``/metrics`` and evaluates every query: each
  dashboard query returns series, no query errs.

Skipped without promtool/prometheus, failed with ``CI=true`` (.ci/services.sh installs them).
"""

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import override_settings
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from django_aio_request import (
    Deadline,
    clients,
    constant_delays,
    get,
    sequential_strategy,
    single_attempt_strategy,
)
from django_aio_request.metrics.deferred import flush_all
from tests.support.loopback import LoopbackServer, free_port, hang_until_disconnect

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yml"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = pytest.mark.urls("tests.support.urls_metrics")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        reason = f"{name} not found: install Debian's prometheus package (apt-get install prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return found


def dashboard_queries(rate_interval: str = "5m") -> list[tuple[str, str]]:
    """(panel title, query) of every target of the dashboard, with Grafana's variables replaced as
    Grafana replaces them (``$endpoint`` "All" is the regex ``.*``)."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            query = target["expr"].replace("$__rate_interval", rate_interval)
            query = query.replace("$endpoint", ".*").replace("$job", ".*")
            found.append((panel["title"], query))
    return found


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def test_the_alerting_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = tool("promtool")
    for arguments in (("check", "rules", ALERTS.name), ("test", "rules", "alerts.test.yml")):
        done = subprocess.run([promtool, *arguments], cwd=OBSERVABILITY, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    assert len(alert_queries()) == 8


def test_debian_s_prometheus_has_no_setting_for_a_scrape_s_headers(tmp_path: Path) -> None:
    """docs/budgets-and-shedding.md: a scraper that sends ``X-Request-Priority: high`` gets past load
    shedding, but Prometheus 2.42 (Debian 12's) cannot send one: its promtool refuses a scrape
    config's ``http_headers`` (added in a later release), and accepts the same config without it."""
    promtool = tool("promtool")
    version = subprocess.run([promtool, "--version"], capture_output=True, text=True, check=False)
    if " 2.42." not in version.stdout + version.stderr:
        reason = f"the sentence is about Prometheus 2.42, this is another: {version.stdout.strip()[:80]!r}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason} (say what it does in the docs)")
        pytest.skip(reason)
    job = {"job_name": "orders", "static_configs": [{"targets": ["127.0.0.1:8000"]}]}
    scraped_with_header = {**job, "http_headers": {"X-Request-Priority": {"values": ["high"]}}}
    for name, scrape in (("plain.yml", job), ("header.yml", scraped_with_header)):
        (tmp_path / name).write_text(yaml.safe_dump({"scrape_configs": [scrape]}))
    check = [promtool, "check", "config"]
    plain = subprocess.run([*check, "plain.yml"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    header = subprocess.run([*check, "header.yml"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert header.returncode != 0
    assert "field http_headers not found" in header.stdout + header.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    promtool = tool("promtool")
    queries = dashboard_queries()
    assert len(queries) >= 13
    # promtool parses the expression of every rule it checks: each query becomes a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{n}", "expr": query}
                                                      for n, (_, query) in enumerate(queries)]}]}  # fmt: skip
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", "dashboard.yml"], cwd=tmp_path, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_the_error_ratio_panel_counts_the_statuses_the_alert_counts() -> None:
    """The panel counted 5xx and 408 but not 489 (a network error), which the alert counts: it showed
    no errors for an endpoint refusing every connection while AioRequestErrorRatioHigh fired."""
    statuses = re.compile(r'response_status\s*=~\s*"([^"]*)"')
    panel = dict(dashboard_queries())["Error ratio by endpoint"]
    alert = dict(alert_queries())["AioRequestErrorRatioHigh"]
    assert statuses.findall(panel) == statuses.findall(alert) == ["5..|408|489"]


def test_the_server_panels_show_each_service_apart(tmp_path: Path) -> None:
    """The server panels summed every service Prometheus scrapes: one service shedding high priority
    showed as the fleet's shedding, with no service named, and a slow service's p99 for a caller was
    lost in a fast one's (a review). Two services here, orders slow and shedding, billing fast."""
    panels = dict(dashboard_queries())
    minute = "0+60x20"  # one a second, sampled every minute
    series = [
        ('aio_request_server_shed_total{job="orders",priority="high",reason="capacity"}', minute),
        ('aio_request_server_shed_total{job="billing",priority="high",reason="capacity"}', "0+0x20"),
        ('aio_request_server_rejected_total{job="orders",reason="low_timeout"}', minute),
        ('aio_request_server_rejected_total{job="billing",reason="low_timeout"}', "0+0x20"),
    ]
    for job, le, per_minute in (("orders", "5.0", 60), ("billing", "0.1", 6000)):  # all in one bucket
        for bound in ("0.1", "5.0", "+Inf"):
            count = per_minute if float(bound) >= float(le) else 0
            series.append((f'aio_request_server_latency_bucket{{job="{job}",request_client="frontend",le="{bound}"}}',
                           f"0+{count}x20"))  # fmt: skip
    shed = {"priority": "high", "reason": "capacity"}
    expected: dict[str, list[tuple[dict[str, str], float]]] = {
        "Requests shed by priority": [({"job": "orders", **shed}, 1), ({"job": "billing", **shed}, 0)],
        "Requests answered 408 before the view ran": [
            ({"job": "orders", "reason": "low_timeout"}, 1),
            ({"job": "billing", "reason": "low_timeout"}, 0),
        ],
        # p99 within the bucket that holds every request: 4.951 s of orders' 0.1-5 s, 0.099 s of billing's 0-0.1 s.
        "Server latency p99 by calling service": [
            ({"job": "orders", "request_client": "frontend"}, 4.951),
            ({"job": "billing", "request_client": "frontend"}, 0.099),
        ],
    }
    tests = [
        {
            "expr": panels[title],
            "eval_time": "10m",
            "exp_samples": [
                {"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "value": value}
                for labels, value in samples
            ],
        }
        for title, samples in expected.items()
    ]
    unit = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in series],
                "promql_expr_test": tests,
            }
        ],
    }
    (tmp_path / "panels.test.yml").write_text(yaml.safe_dump(unit))
    done = subprocess.run([tool("promtool"), "test", "rules", "panels.test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


SELECTOR = re.compile(r"\b(aio_request_[a-z_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def uses(query: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metrics a query reads with the labels its matchers name, and the labels it groups by."""
    metrics: dict[str, set[str]] = {}
    for name, matchers in SELECTOR.findall(query):
        metrics.setdefault(name, set()).update(MATCHER.findall(matchers))
    grouping = {label.strip() for group in GROUPING.findall(query) for label in group.split(",") if label.strip()}
    return metrics, grouping


def exported(text: str) -> dict[str, set[str]]:
    """Sample name -> the label names it carries, from the text of /metrics."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


BREAKER = {"BREAK_DURATION": 60, "SAMPLING_DURATION": 30, "MINIMUM_THROUGHPUT": 2, "FAILURE_THRESHOLD": 0.5}


def real_calls(server: LoopbackServer, live_url: str, unreachable: str) -> None:
    """Calls that make every metric the dashboard and the alerts read (``unreachable``: refused, 489)."""
    first = {"seen": False}

    def slow_first(handler: Any) -> None:
        if not first["seen"]:
            first["seen"] = True
            time.sleep(0.5)  # the first attempt is slow: the hedge sent 50 ms later wins
        handler.reply(200, b"ok")

    server.route("/hedge", slow_first)
    server.route("/down", lambda h: h.reply(503, b"down"))
    setting = {
        "SERVICE_NAME": "observer",
        "CLIENTS": {
            "own": {"ENDPOINT": live_url + "/metrics-test/"},
            "hedged": {
                "ENDPOINT": server.url,
                "SAFE_METHOD_STRATEGY": {"NAME": "parallel", "ATTEMPTS_COUNT": 2,
                                         "DELAYS": {"NAME": "constant", "DELAY": 0.05}},
            },
            "breaking": {"ENDPOINT": server.url + "b/", "CIRCUIT_BREAKER": BREAKER,
                         "SAFE_METHOD_STRATEGY": {"NAME": "single"}},
            "budgeted": {"ENDPOINT": server.url + "c/", "RETRY_BUDGET": {"RATIO": 0.0, "MIN_PER_SECOND": 0.0},
                         "SAFE_METHOD_STRATEGY": {"NAME": "sequential", "ATTEMPTS_COUNT": 3}},
            "unreachable": {"ENDPOINT": unreachable, "SAFE_METHOD_STRATEGY": {"NAME": "single"}},
        },
    }  # fmt: skip
    server.route("/b/down", lambda h: h.reply(503, b"down"))
    server.route("/c/down", lambda h: h.reply(503, b"down"))
    with override_settings(AIO_REQUEST=setting):
        for path in ("ping", "fails", "things/7"):
            with clients["own"].request(get(path)) as response:
                assert response.status in (200, 503), response.status
        with clients["hedged"].request(get("hedge")) as response:
            assert response.status == 200
        statuses = []
        for _ in range(3):
            with clients["breaking"].request(get("down")) as response:
                statuses.append(response.status)
        assert statuses == [503, 503, 502]  # the third never left: the circuit was open
        with clients["budgeted"].request(get("down")) as response:
            assert response.status == 503
            assert response.budget_exhausted
        with clients["unreachable"].request(get("ping")) as response:
            assert response.status == 489  # a network error: the connection was refused
        expired = Deadline.from_timeout(0.001)
        time.sleep(0.01)
        with clients["own"].request(get("ping"), deadline=expired) as response:
            assert response.status == 408
        flush_all()


@pytest.fixture
def unreachable() -> str:
    """An endpoint nothing listens on."""
    return f"http://127.0.0.1:{free_port()}/"


@pytest.fixture
def scraped(server: LoopbackServer, live_server: Any, unreachable: str) -> str:
    real_calls(server, live_server.url, unreachable)
    with _NO_PROXY.open(live_server.url + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_every_metric_and_label_the_queries_use_is_on_metrics_after_real_calls(scraped: str) -> None:
    on_metrics = exported(scraped)
    for source, queries in (("dashboard", dashboard_queries()), ("alerts", alert_queries())):
        for title, query in queries:
            metrics, grouping = uses(query)
            assert metrics, (source, title, query)
            for name, labels in metrics.items():
                assert name in on_metrics, f"{source} {title!r}: {name} is not on /metrics"
                missing = labels - on_metrics[name] - {"job", "instance"}  # the scrape's target labels
                assert not missing, f"{source} {title!r}: {name} has no label {missing}"
            # Prometheus adds the target's job and instance to every series it scrapes.
            carried = set().union(*(on_metrics[name] for name in metrics)) | {"job", "instance"}
            assert grouping <= carried, f"{source} {title!r}: grouped by {grouping - carried}, not a label of {metrics}"


@pytest.fixture
def prometheus(tmp_path: Path, live_server: Any) -> Iterator[str]:
    """A real Prometheus on loopback scraping the live server's /metrics every 3 s; its URL. (Every
    second, with the 1 s timeout that allows, most scrapes of the test process's registry failed on a
    VM three times slower than the last, and the test waited in vain for three good ones.)"""
    binary = tool("prometheus")
    target = urllib.parse.urlsplit(live_server.url).netloc
    config = {"global": {"scrape_interval": "3s", "scrape_timeout": "3s", "evaluation_interval": "3s"},
              "scrape_configs": [{"job_name": "django", "metrics_path": "/metrics",
                                  "static_configs": [{"targets": [target]}]}]}  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ready(prometheus: str, process: subprocess.Popen[bytes]) -> None:
    """Until Prometheus says it is ready: before that its API answers 503 "Service Unavailable" in
    plain text, not JSON (a CI run on a slow VM queried it that early)."""
    end = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"Prometheus exited with {process.returncode}"
        try:
            with _NO_PROXY.open(prometheus + "/-/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # refused while it starts, or 503 (an HTTPError) while it loads
            pass
        assert time.monotonic() < end, "Prometheus was not ready in 60 s"
        time.sleep(0.2)


def query(prometheus: str, expression: str) -> dict[str, Any]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with _NO_PROXY.open(url, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:  # 400: a query Prometheus cannot parse or run
        answer = json.load(error)
    return answer


def query_after_a_good_scrape(prometheus: str, expression: str) -> dict[str, Any]:
    """``query()``, again after the next scrape when the last one failed and the answer is empty.

    A scrape that fails (the live server slower than the 1 s scrape timeout on a loaded machine)
    marks every series of the target stale: until the next good scrape, an instant query of a gauge
    finds nothing, whatever the dashboard says. That is Prometheus, not the dashboard: an empty
    answer while the last scrape succeeded is still returned as it is, for the test to fail on.
    """
    end = time.monotonic() + 15
    while True:
        answer = query(prometheus, expression)
        if answer.get("data", {}).get("result") or time.monotonic() > end:
            return answer
        up = query(prometheus, 'up{job="django"}')["data"]["result"]
        if up and float(up[0]["value"][1]) == 1:
            return answer
        time.sleep(0.5)


@pytest.mark.same_on_every_django
@pytest.mark.timeout(240)
def test_a_real_prometheus_evaluates_every_query_to_series(scraped: str, prometheus: str, unreachable: str) -> None:
    # Two scrapes at least after the calls: rate() needs two samples. Good scrapes (up is 1), not any:
    # on a loaded machine a scrape that timed out counted, and a rate over the one good sample left
    # in the window had no series (a CI run on a VM three times slower than the last).
    end = time.monotonic() + 90
    while True:
        try:
            scrapes = query(prometheus, 'sum_over_time(up{job="django"}[1m])')["data"]["result"]
        except OSError:
            scrapes = []
        if scrapes and float(scrapes[0]["value"][1]) >= 3:
            break
        assert time.monotonic() < end, "Prometheus did not scrape /metrics well three times in 90 s"
        time.sleep(0.5)
    for title, expression in dashboard_queries(rate_interval="1m"):
        answer = query_after_a_good_scrape(prometheus, expression)
        assert answer["status"] == "success", (title, answer)
        assert answer["data"]["result"], f"dashboard {title!r}: no series for\n{expression}"
        if title == "Error ratio by endpoint":  # the refused call (489) is an error, as the alert counts it
            endpoints = {r["metric"]["request_endpoint"] for r in answer["data"]["result"]}
            assert unreachable in endpoints, endpoints  # (NaN here: no call moved the counters between scrapes)
    for alert, expression in alert_queries():
        answer = query(prometheus, expression)
        assert answer["status"] == "success", (alert, answer)  # firing or not: the data decides


def docs_query(after: str) -> str:
    """The first ```promql block of docs/metrics.md after the line starting with ``after``."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    start = text.index("\n" + after)
    block = re.search(r"```promql\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, after
    return block.group(1).strip()


def test_the_time_open_query_of_the_docs_counts_only_the_time_open(tmp_path: Path) -> None:
    """A series younger than the hour (born 20 minutes before, its circuit open for the last 10):
    avg_over_time(...[1h]) * 3600 said 1,800 s. promtool evaluates the documented query on it, and
    on a series as old as the hour with its circuit open for its last 10 minutes: 600 s both,
    within two steps either way (the subquery counts the step at the hour's end)."""
    promtool = tool("promtool")
    expression = docs_query("Time a breaker spent open over the last hour")
    assert "aio_request_circuit_breaker_state" in expression, expression
    # A sample every 15 s ("v xN" is N + 1 samples, "_xN" N missing ones): absent for 40 minutes,
    # closed for 10, then open for 10.
    young = "_x160 0x39 1x39"
    old = "0x199 1x39"  # closed for 50 minutes, then open for 10
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {
                        "series": 'aio_request_circuit_breaker_state{request_endpoint="young", state="open"}',
                        "values": young,
                    },
                    {
                        "series": 'aio_request_circuit_breaker_state{request_endpoint="old", state="open"}',
                        "values": old,
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": f"abs(({expression}) - 600) <= bool 20",
                        "eval_time": "60m",
                        "exp_samples": [
                            {"labels": '{request_endpoint="young", state="open"}', "value": 1},
                            {"labels": '{request_endpoint="old", state="open"}', "value": 1},
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "time_open.test.yml").write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool, "test", "rules", "time_open.test.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{expression}\n{done.stdout}{done.stderr}"


def at_value(series_text: str) -> list[dict[str, str]]:
    """promtool input series for every ``aio_request_`` counter sample of ``series_text`` (a /metrics
    page): each from 0 to its value one minute later, so a rate over them is what the calls did."""
    found = []
    for family in text_string_to_metric_families(series_text):
        for sample in family.samples:
            if sample.name.startswith("aio_request_") and sample.name.endswith(("_total", "_count")):
                labels = ", ".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                found.append({"series": f"{sample.name}{{{labels}}}", "values": f"0 {sample.value:g}"})
    return found


def test_the_extra_load_query_counts_extra_attempts_per_call_started(
    tmp_path: Path, server: LoopbackServer, make_client: Any
) -> None:
    """10 single attempts, 3 async calls their caller cancelled (each sent its attempt and returned
    nothing), and 2 calls of 3 sequential attempts all answered 500: 4 extra attempts for 15 calls
    started. promtool evaluates the docs' query, the dashboard's panel and the alert's expression on
    what /metrics then holds: 4/15 each. Over the calls that returned, as all three divided until a
    review, it read 4/12 (the docs' query, attempts over calls returned: 19/12)."""
    from tests.core.test_async_client import cancel_call_after

    promtool = tool("promtool")
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    server.route("/hang", hang_until_disconnect)
    server.route("/fail", lambda h: h.reply(500, b"no"))
    single = make_client(safe_method_strategy=single_attempt_strategy(), max_workers=1)
    retrying = make_client(
        safe_method_strategy=sequential_strategy(attempts_count=3, delays_provider=constant_delays(delay=0))
    )
    for _ in range(10):
        with single.request(get("ok")) as response:
            assert response.status == 200

    async def cancelled() -> None:
        for _ in range(3):
            await cancel_call_after(single, "hang", 0.1)

    asyncio.run(cancelled())
    for _ in range(2):
        with retrying.request(get("fail")) as response:
            assert response.status == 500
    flush_all()
    page = generate_latest(REGISTRY).decode()
    mine = f'request_endpoint="{server.url}"'
    panel = next(q for _, q in dashboard_queries() if "aio_request_retries_total" in q)
    alert = dict(alert_queries())["AioRequestHedgingHigh"]
    expressions = {
        "docs": docs_query("Extra load from retries and hedges"),
        "dashboard": panel,
        "alert": re.sub(r"\s*>\s*[0-9.]+\s*$", "", alert),
    }
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [s for s in at_value(page) if mine in s["series"]],
                "promql_expr_test": [
                    {
                        "expr": f"abs(({expression}) - 4 / 15) <= bool 1e-9",
                        "eval_time": "1m",
                        "exp_samples": [{"labels": f"{{{mine}}}", "value": 1}],
                    }
                    for expression in expressions.values()
                ],
            }
        ],
    }
    (tmp_path / "extra_load.test.yml").write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool, "test", "rules", "extra_load.test.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{expressions}\n{done.stdout}{done.stderr}"

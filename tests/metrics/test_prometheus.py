"""Histograms of aio-request's names: one metric of each name in a process running both libraries,
whichever is imported first, with nothing recorded lost (docs/metrics.md). Each test imports
aio_request in a subprocess, so this process keeps the import order its other tests expect."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A loopback server answering "ok" to every GET, for the scripts below (srv; srv.server_port).
_SERVER = """
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args): pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
"""

LATE_IMPORT = (
    """
import http.server, json, os, sys, threading
import django_aio_request as dar
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from django_aio_request import metrics as all_metrics
from django_aio_request.metrics import server as server_metrics

"""
    + _SERVER
    + """endpoint = f"http://127.0.0.1:{srv.server_port}/"
client = dar.setup(endpoint=endpoint)

def call():
    with client.request(dar.get("x")) as response:
        assert response.status == 200
    server_metrics.server_observations.add(("orders", "GET", "ping", 200, None, 0.03))

def samples():
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # what a scrape reads from the processes' files
        all_metrics.flush()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    got = {}
    for family in registry.collect():
        for sample in family.samples:
            mine = sample.labels.get("request_endpoint") == endpoint or sample.labels.get("request_client") == "orders"
            if family.name.endswith("latency") and mine and not sample.name.endswith("_created"):
                key = sample.name + "{" + sample.labels.get("le", "") + "}"
                got[key] = got.get(key, 0) + sample.value
    return got

for _ in range(5):
    call()
before = samples()
import aio_request.client, aio_request.pipeline  # aio-request's histograms take the names
at_import = samples()
call()
after = samples()
theirs = REGISTRY._names_to_collectors["aio_request_latency"] is aio_request.client.latency_histogram
print(json.dumps([before, at_import, after, theirs]))
"""
)


@pytest.mark.parametrize("multiprocess", [False, True], ids=["one process", "multiprocess mode"])
def test_counts_recorded_before_a_late_aio_request_import_are_kept(multiprocess: bool, tmp_path: Path) -> None:
    """django_aio_request first, 5 calls, then ``import aio_request``: the 5 were no longer exported
    (5, then none, then 1 after one more call). They are now added to aio-request's histograms,
    which ours record into from then on; in multiprocess mode the processes' files kept them
    already, and are not counted twice."""
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", LATE_IMPORT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    before, at_import, after, theirs = json.loads(done.stdout)

    assert theirs is True  # the name is aio-request's now
    for name in ("aio_request_latency", "aio_request_transport_latency", "aio_request_server_latency"):
        assert before[f"{name}_count{{}}"] == 5, before
    assert at_import == before  # every bucket and sum of the three, unchanged by the import
    assert after["aio_request_latency_count{}"] == 6
    assert after["aio_request_server_latency_count{}"] == 6
    assert after["aio_request_server_latency_sum{}"] == pytest.approx(6 * 0.03)
    assert after["aio_request_server_latency_bucket{0.05}"] == 6


@pytest.mark.parametrize("variable", ["PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"])
def test_manage_py_check_names_a_multiprocess_directory_that_does_not_exist(variable: str, tmp_path: Path) -> None:
    # prometheus_client failed at the first metric made, with FileNotFoundError .../counter_<pid>.db:
    # manage.py check (and every request) died of it without saying which setting was wrong.
    from tests.support.manage import manage

    missing = tmp_path / "not-made"
    env = {key: value for key, value in os.environ.items() if key.lower() != "prometheus_multiproc_dir"}
    env[variable] = str(missing)
    done = manage("check", settings="settings.demo", env=env)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"{variable} is " in last  # the variable that was set
    assert str(missing) in last
    assert "FileNotFoundError" not in done.stderr
    missing.mkdir()
    assert manage("check", settings="settings.demo", env=env).returncode == 0


def test_an_empty_multiprocess_directory_variable_is_refused_not_the_current_directory(tmp_path: Path) -> None:
    # prometheus_client takes an empty PROMETHEUS_MULTIPROC_DIR as set, and wrote its files into the
    # current directory.
    from tests.support.manage import manage

    env = {key: value for key, value in os.environ.items() if key.lower() != "prometheus_multiproc_dir"}
    env["PROMETHEUS_MULTIPROC_DIR"] = ""
    before = set(ROOT.glob("*.db"))
    done = manage("check", settings="settings.demo", env=env)
    assert done.returncode != 0
    assert "PROMETHEUS_MULTIPROC_DIR is set but empty" in done.stderr.strip().splitlines()[-1]
    assert set(ROOT.glob("*.db")) == before


FILTERED_SCRAPE = (
    """
import http.server, json, sys, threading, urllib.request
import prometheus_client
import django_aio_request as dar

if sys.argv[1] == "1":
    import aio_request.client, aio_request.pipeline  # aio-request's histograms take the names

"""
    + _SERVER
    + """client = dar.setup(endpoint=f"http://127.0.0.1:{srv.server_port}/")
with client.request(dar.get("x")) as response:
    assert response.status == 200
from django_aio_request import metrics as all_metrics
all_metrics.flush()  # aio-request's collectors, registered first, are collected before ours would flush
import socket
with socket.socket() as free:  # a port of its own: start_http_server() returns nothing before prometheus-client 0.20
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
prometheus_client.start_http_server(port, addr="127.0.0.1")
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def names(query=""):
    url = f"http://127.0.0.1:{port}/metrics{query}"
    text = opener.open(url, timeout=10).read().decode()
    return sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("aio_request")})

print(json.dumps([
    "aio_request_latency_count" in names(),
    names("?name[]=aio_request_attempts_total"),
    names("?name[]=aio_request_latency_count"),
]))
"""
)


@pytest.mark.parametrize("aio_request_imported", [False, True], ids=["alone", "aio-request imported"])
def test_a_scrape_filtered_by_name_returns_the_counters_but_not_the_histograms_of_aio_request_s_names(
    aio_request_imported: bool,
) -> None:
    """docs/metrics.md: the three histograms of aio-request's names are collected by a collector that
    claims no name (so that aio-request, imported later, can register them), and prometheus_client
    answers a scrape filtered by name (``?name[]=...``, its own start_http_server) from the names
    collectors claimed: such a scrape leaves them out, unless aio-request is imported (its collector
    then holds the name, and ours record into it). An unfiltered scrape (Prometheus's) has them."""
    env = {key: value for key, value in os.environ.items() if key.lower() != "prometheus_multiproc_dir"}
    done = subprocess.run(
        [sys.executable, "-c", FILTERED_SCRAPE, str(int(aio_request_imported))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    unfiltered, counter, histogram = json.loads(done.stdout)
    assert unfiltered is True
    assert counter == ["aio_request_attempts_total"]
    assert histogram == (["aio_request_latency_count"] if aio_request_imported else [])

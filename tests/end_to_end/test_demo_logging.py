"""The demo's log as ``make demo`` prints it: each warning once, naming the service that logged it."""

import http.client
from pathlib import Path

from tests.end_to_end.test_demo_ports import _demo_until_started, _free_ports_and_env


def test_a_warning_of_a_demo_service_is_printed_once_naming_the_service(tmp_path: Path) -> None:
    """Django's own ``django`` logger printed each of its warnings a second time without the
    service's name, beside the root logger's line that names it (a review: 50 such lines in a demo's
    log). A POST without a CSRF cookie makes Django warn."""
    ports, env = _free_ports_and_env(tmp_path)
    statuses = []

    def post_without_csrf_cookie() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", int(ports["DEMO_BILLING_PORT"]), timeout=30)
        connection.request("POST", "/demo/downstream/things/1", body=b"")
        statuses.append(connection.getresponse().status)
        connection.close()

    output = _demo_until_started(tmp_path, env, then=post_without_csrf_cookie)
    assert statuses == [403]
    warned = [line for line in output.splitlines() if "Forbidden (CSRF" in line]
    assert len(warned) == 1, warned
    assert warned[0].startswith("[billing] WARNING django.security.csrf: Forbidden (CSRF"), warned

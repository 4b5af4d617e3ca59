"""AIO_REQUEST validation: every bad value is reported by `manage.py check`, naming client, key and what is allowed."""

import collections
import functools
import os
import subprocess
import types
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_aio_request import Request, Response, ResponseVerdict
from django_aio_request.checks import check_settings
from django_aio_request.core.classifier import ResponseClassifier
from tests.support.loopback import LoopbackServer, free_port
from tests.support.manage import manage as run_manage

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"ENDPOINT": "http://billing:8080/"}


def messages(setting: object) -> list[str]:
    with override_settings(AIO_REQUEST=setting):
        return [f"{m.id} {m.msg} | {m.hint}" for m in check_settings()]


def test_the_example_from_the_docs_is_valid() -> None:
    setting = {
        "SERVICE_NAME": "orders",
        "CLIENTS": {
            "billing": {
                "ENDPOINT": "http://billing:8080/",
                "TIMEOUT": 5.0,
                "SAFE_METHOD_STRATEGY": {
                    "NAME": "parallel",
                    "ATTEMPTS_COUNT": 3,
                    "DELAYS": {"NAME": "linear_backoff", "MIN_DELAY_SECONDS": 0.05},
                },
                "UNSAFE_METHOD_STRATEGY": {"NAME": "single"},
                "CIRCUIT_BREAKER": {
                    "BREAK_DURATION": 1.0,
                    "SAMPLING_DURATION": 1.0,
                    "MINIMUM_THROUGHPUT": 2,
                    "FAILURE_THRESHOLD": 0.5,
                },
            },
        },
    }
    assert messages(setting) == []


def test_every_strategy_and_delay_kind_is_accepted() -> None:
    sequential = {
        "NAME": "sequential",
        "ATTEMPTS_COUNT": 2,
        "DELAYS": {"NAME": "constant", "DELAY": 0.1},
        "DEADLINE_PROVIDER": {"NAME": "split", "ATTEMPTS_COUNT_TO_SPLIT": 2},
    }
    parallel = {"NAME": "parallel", "DELAYS": {"NAME": "percentile", "PERCENTILE": 0.9}}
    retrying = {"NAME": "retry_until_deadline_expired", "STRATEGY": {"NAME": "single"}}
    everything = {
        "RESPONSE_CLASSIFIER": "django_aio_request.DefaultResponseClassifier",
        "REQUEST_ENRICHER": "tests.conf.test_settings_checks.enricher",
        "PRIORITY": "HIGH",
        "EMIT_SYSTEM_HEADERS": False,
        "MAX_WORKERS": 4,
        "MAX_CONNECTIONS": 8,
        "CONNECT_RETRIES": 1,
    }
    setting = {
        "CLIENTS": {
            "a": {**GOOD, "SAFE_METHOD_STRATEGY": sequential},
            "b": {**GOOD, "SAFE_METHOD_STRATEGY": parallel},
            "c": {**GOOD, "SAFE_METHOD_STRATEGY": retrying},
            "d": {**GOOD, **everything},
        }
    }
    assert messages(setting) == []


def enricher(request: object) -> object:
    return request


@pytest.mark.parametrize(
    ("client", "expected", "code"),
    [
        ({"TIMEOUT": 5}, ["['CLIENTS']['billing']['ENDPOINT'] is required"], "E004"),
        ({**GOOD, "TIMEOUT": -1}, ["['TIMEOUT'] must be a number of seconds > 0, not -1"], "E003"),
        ({**GOOD, "TIMEOUT": "5"}, ["['TIMEOUT'] must be a number of seconds > 0, not '5'"], "E003"),
        ({**GOOD, "TIMEOUT": float("nan")}, ["['TIMEOUT'] must be a number of seconds > 0, not nan"], "E003"),
        ({**GOOD, "TIMEOUT": True}, ["['TIMEOUT'] must be a number of seconds > 0, not True"], "E003"),
        (
            {**GOOD, "SAFE_METHOD_STRATEGY": {"NAME": "sequential", "ATTEMPTS_COUNT": 2.0}},
            ["must be a whole number (an int) >= 1, not 2.0"],
            "E003",
        ),
        # A number, though not one taken: which are (a review: "must be a number ..., not Decimal('2.5')").
        (
            {**GOOD, "TIMEOUT": Decimal("2.5")},
            ["['TIMEOUT'] must be a number of seconds (an int or a float) > 0, not Decimal('2.5')"],
            "E003",
        ),
        (
            {**GOOD, "CIRCUIT_BREAKER": True},  # as RETRY_BUDGET and SHEDDING take: say what this takes
            [
                "['CIRCUIT_BREAKER'] must be a dict, not bool"
                " | None for no circuit breaker, {} for one with the defaults"
            ],
            "E002",
        ),
        ({**GOOD, "TIMEOUT": 0}, ["['TIMEOUT'] must be a number of seconds > 0, not 0"], "E003"),
        ({"ENDPOINT": "billing:8080/"}, ["['ENDPOINT'] endpoint must be an absolute http:// or https:// URL"], "E004"),
        ({"ENDPOINT": "/billing/"}, ["['ENDPOINT'] endpoint must be an absolute"], "E004"),
        ({"ENDPOINT": "ftp://billing/"}, ["['ENDPOINT'] endpoint must be an absolute"], "E004"),
        (
            {"ENDPOINT": "http://billing:99999/"},
            ["['ENDPOINT'] endpoint 'http://billing:99999/' has an invalid port"],
            "E004",
        ),
        (
            {**GOOD, "TIMOUT": 5},
            ["['TIMOUT'] is not a known key | did you mean 'TIMEOUT'? allowed keys: ENDPOINT, TIMEOUT"],
            "E001",
        ),
        (
            {**GOOD, "PRIORITY": "urgent"},
            ["['PRIORITY'] is 'urgent', not a priority | allowed: high, normal, low"],
            "E007",
        ),
        (
            {**GOOD, "SAFE_METHOD_STRATEGY": {"NAME": "hedged"}},
            ["['SAFE_METHOD_STRATEGY']['NAME'] is 'hedged', not a known name | allowed: single, sequential, parallel"],
            "E005",
        ),
        (
            {**GOOD, "SAFE_METHOD_STRATEGY": {"NAME": "single", "ATTEMPTS_COUNT": 2}},
            ["['SAFE_METHOD_STRATEGY']['ATTEMPTS_COUNT'] is not a known key | allowed keys: NAME"],
            "E001",
        ),
        (
            {**GOOD, "SAFE_METHOD_STRATEGY": {"NAME": "parallel", "ATTEMPTS_COUNT": 0}},
            ["['ATTEMPTS_COUNT'] must be a whole number >= 1, not 0"],
            "E003",
        ),
        (
            {**GOOD, "SAFE_METHOD_STRATEGY": {"NAME": "parallel", "DELAYS": {"NAME": "exponential"}}},
            ["['DELAYS']['NAME'] is 'exponential', not a known name | allowed: constant, linear_backoff, percentile"],
            "E005",
        ),
        (
            {**GOOD, "SAFE_METHOD_STRATEGY": {"NAME": "parallel", "DELAYS": {"NAME": "percentile", "PERCENTILE": 95}}},
            ["['PERCENTILE'] must be a fraction > 0 and < 1, not 95"],
            "E003",
        ),
        (
            {**GOOD, "SAFE_METHOD_STRATEGY": {"NAME": "retry_until_deadline_expired"}},
            ["['STRATEGY'] is required"],
            "E010",
        ),
        (
            {**GOOD, "CIRCUIT_BREAKER": {"FAILURE_THRESHOLD": 1.5}},
            ["['FAILURE_THRESHOLD'] must be a ratio > 0 and < 1"],
            "E003",
        ),
        (
            {**GOOD, "CIRCUIT_BREAKER": {"MINIMUM_THROUGHPUT": 0}},
            ["['MINIMUM_THROUGHPUT'] must be a whole number >= 1"],
            "E003",
        ),
        ({**GOOD, "CIRCUIT_BREAKER": {"BREAK_DURATON": 1}}, ["['BREAK_DURATON'] is not a known key"], "E001"),
        ({**GOOD, "CIRCUIT_BREAKER": 5}, ["['CIRCUIT_BREAKER'] must be a dict, not int"], "E002"),
        ({**GOOD, "RESPONSE_CLASSIFIER": "no.such.Classifier"}, ["['RESPONSE_CLASSIFIER'] cannot be imported"], "E008"),
        ({**GOOD, "RESPONSE_CLASSIFIER": "django_aio_request.Response"}, ["not a ResponseClassifier subclass"], "E008"),
        (  # before: passed the check, and building the client raised TypeError
            {**GOOD, "RESPONSE_CLASSIFIER": "tests.support.classifiers.NeedsArguments"},
            ["not a ResponseClassifier subclass built with no arguments"],
            "E008",
        ),
        (
            {**GOOD, "REQUEST_ENRICHER": "django_aio_request.core.status.TIMEOUT"},
            ["not a function taking and returning"],
            "E008",
        ),
        (
            {**GOOD, "LOW_TIMEOUT_THRESHOLD": -0.1},
            ["['LOW_TIMEOUT_THRESHOLD'] must be a number of seconds >= 0"],
            "E003",
        ),
        ({**GOOD, "MAX_WORKERS": 0}, ["['MAX_WORKERS'] must be a whole number >= 1, not 0"], "E003"),
        ({**GOOD, "CONNECT_RETRIES": 1.5}, ["['CONNECT_RETRIES'] must be a whole number >= 0, not 1.5"], "E003"),
        ({**GOOD, "EMIT_SYSTEM_HEADERS": "yes"}, ["['EMIT_SYSTEM_HEADERS'] must be True or False, not 'yes'"], "E002"),
        ({**GOOD, "MAX_RESPONSE_SIZE": -1}, ["['MAX_RESPONSE_SIZE'] must be a whole number >= 0, not -1"], "E003"),
        ({"ENDPOINT": "http://u:p@billing/"}, ["['ENDPOINT'] endpoint must not carry credentials"], "E004"),
    ],
)
def test_a_bad_client_setting_is_an_error_naming_client_key_and_what_is_allowed(
    client: dict[str, object], expected: list[str], code: str
) -> None:
    found = messages({"CLIENTS": {"billing": client}})
    assert found, "expected an error"
    assert all(m.startswith(f"django_aio_request.{code} AIO_REQUEST['CLIENTS']['billing']") for m in found), found
    for text in expected:
        assert any(text in m for m in found), (text, found)


def test_top_level_problems() -> None:
    assert any("must be a dict, not list" in m for m in messages([]))
    assert any("['CLIENT'] is not a known key" in m for m in messages({"CLIENT": {}}))
    assert any("['SERVICE_NAME'] must be a non-empty string" in m for m in messages({"SERVICE_NAME": ""}))
    assert any("['CLIENTS'] must be a dict" in m for m in messages({"CLIENTS": ["billing"]}))


def test_every_problem_is_reported_at_once() -> None:
    found = messages({"CLIENTS": {"a": {**GOOD, "TIMEOUT": -1}, "b": {"ENDPOINT": "nope"}}})
    assert len(found) == 2
    assert any("['a']['TIMEOUT']" in m for m in found)
    assert any("['b']['ENDPOINT']" in m for m in found)


def test_an_endpoint_without_trailing_slash_is_a_warning() -> None:
    found = messages({"CLIENTS": {"a": {"ENDPOINT": "http://billing:8080/api"}}})
    assert len(found) == 1
    assert found[0].startswith("django_aio_request.W001 AIO_REQUEST['CLIENTS']['a']['ENDPOINT'] does not end with '/'")


def test_an_endpoint_with_no_path_at_all_is_no_warning(server: LoopbackServer) -> None:
    """``http://billing:8080`` joins as ``http://billing:8080/`` (a request for ``x`` goes to ``/x``):
    W001 warned of a join that was right."""
    from django_aio_request import clients, get

    endpoint = server.url.rstrip("/")
    assert messages({"CLIENTS": {"a": {"ENDPOINT": endpoint}}}) == []
    server.route("/x", lambda h: h.reply(200))
    with override_settings(AIO_REQUEST={"CLIENTS": {"a": {"ENDPOINT": endpoint}}}), clients["a"].request(get("x")) as r:
        assert r.status == 200


def test_call_command_check_fails_on_bad_settings() -> None:
    with (
        override_settings(AIO_REQUEST={"CLIENTS": {"billing": {**GOOD, "TIMEOUT": -1}}}),
        pytest.raises(SystemCheckError, match=r"AIO_REQUEST\['CLIENTS'\]\['billing'\]\['TIMEOUT'\]"),
    ):
        call_command("check", "--tag", "django_aio_request")


# One value of each kind of problem, and the id `manage.py check` must give it.
EVERY_KIND = {
    "django_aio_request.E001": "AIO_REQUEST['CLIENTS']['billing']['TIMOUT'] is not a known key",
    "django_aio_request.E002": "AIO_REQUEST['CLIENTS']['billing']['EMIT_SYSTEM_HEADERS'] must be True or False",
    "django_aio_request.E003": "AIO_REQUEST['CLIENTS']['billing']['TIMEOUT'] must be a number of seconds > 0, not -1",
    "django_aio_request.E004": "AIO_REQUEST['CLIENTS']['orders']['ENDPOINT'] endpoint must be an absolute",
    "django_aio_request.E005": "AIO_REQUEST['CLIENTS']['billing']['SAFE_METHOD_STRATEGY']['NAME'] is 'hedged'",
    "django_aio_request.E006": "AIO_REQUEST['CIRCUIT_BREAKER_STATE'] is 'redis', not 'local' nor a cache",
    "django_aio_request.E007": "AIO_REQUEST['CLIENTS']['billing']['PRIORITY'] is 'urgent', not a priority",
    "django_aio_request.E008": "AIO_REQUEST['CLIENTS']['billing']['RESPONSE_CLASSIFIER'] cannot be imported",
    "django_aio_request.E009": "AIO_REQUEST['TIMEOUT'] (90.0) must not exceed MAX_TIMEOUT (60.0)",
    "django_aio_request.E010": "AIO_REQUEST['CLIENTS']['billing']['UNSAFE_METHOD_STRATEGY']['STRATEGY'] is required",
}
BAD_SETTINGS = """
from settings.test import *
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
AIO_REQUEST = {
    "CLIENTS": {
        "billing": {
            "ENDPOINT": "http://billing:8080/",
            "TIMOUT": 5,
            "TIMEOUT": -1,
            "EMIT_SYSTEM_HEADERS": "yes",
            "PRIORITY": "urgent",
            "SAFE_METHOD_STRATEGY": {"NAME": "hedged"},
            "UNSAFE_METHOD_STRATEGY": {"NAME": "retry_until_deadline_expired"},
            "RESPONSE_CLASSIFIER": "no.such.Classifier",
        },
        "orders": {"ENDPOINT": "orders:8080"},
    },
    "CIRCUIT_BREAKER_STATE": "redis",
    "TIMEOUT": 90,
}
"""


def manage(tmp_path: Path, *arguments: str, settings: str = BAD_SETTINGS) -> subprocess.CompletedProcess[str]:
    """``python manage.py <arguments>`` in a subprocess, as a user runs it, with ``settings`` as its settings."""
    (tmp_path / "bad_settings.py").write_text(settings)
    return run_manage(*arguments, settings="bad_settings", path=tmp_path)


@pytest.mark.parametrize("arguments", [("check",), ("check", "--tag", "django_aio_request"), ("check", "--deploy")])
def test_manage_py_check_reports_every_kind_with_its_id_and_no_traceback(
    tmp_path: Path, arguments: tuple[str, ...]
) -> None:
    done = manage(tmp_path, *arguments)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("settings.AIO_REQUEST: (")]
    for check_id, text in EVERY_KIND.items():
        assert any(f"({check_id}) {text}" in line for line in errors), (check_id, done.stderr)
    assert len(errors) == len(EVERY_KIND)
    assert "HINT: did you mean 'TIMEOUT'?" in done.stderr
    assert "HINT: allowed: single, sequential, parallel, retry_until_deadline_expired" in done.stderr


def test_manage_py_check_refuses_a_client_name_with_a_nul(tmp_path: Path) -> None:
    settings = """
from settings.test import *
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/"}, "bad\\x00name": {"ENDPOINT": "http://x:1/"}}}
"""
    done = manage(tmp_path, "check", settings=settings)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "AIO_REQUEST['CLIENTS']['bad\\x00name'] is a client name with a NUL character" in done.stderr


def test_manage_py_check_refuses_an_endpoint_read_from_the_environment_with_a_byte_that_is_not_utf_8(
    tmp_path: Path,
) -> None:
    """``ENDPOINT = os.environ["BILLING_URL"]`` with a Latin-1 byte in it: Python reads it as a lone
    surrogate. It passed ``check``, then every publishing round of admin's circuit breakers failed
    (no database's text holds it), so the process's other clients left admin too (a review)."""
    settings = """
import os
from settings.test import *
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
AIO_REQUEST = {"CLIENTS": {
    "good": {"ENDPOINT": "http://good:8080/"},
    "billing": {"ENDPOINT": os.environ["BILLING_URL"]},
}}
"""
    (tmp_path / "bad_settings.py").write_text(settings)
    environment = {**os.environ, "BILLING_URL": "http://billing:8080/caf\udce9/"}  # the byte 0xe9 in the child
    done = run_manage("check", settings="bad_settings", path=tmp_path, env=environment)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "(django_aio_request.E004) AIO_REQUEST['CLIENTS']['billing']['ENDPOINT'] endpoint" in done.stderr
    assert "has a lone surrogate ('\\udce9'), which UTF-8 cannot encode" in done.stderr, done.stderr
    assert "['good']" not in done.stderr


def test_other_commands_stop_with_the_same_list_and_no_traceback(tmp_path: Path) -> None:
    for arguments in (("migrate",), ("runserver", "--noreload", f"127.0.0.1:{free_port()}"), ("circuit_breakers",)):
        done = manage(tmp_path, *arguments)
        assert done.returncode == 1, (arguments, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout, arguments
        for check_id in EVERY_KIND:
            assert f"({check_id})" in done.stderr, (arguments, check_id)


def test_the_first_use_of_a_client_raises_one_message_naming_every_problem(tmp_path: Path) -> None:
    # `shell` runs no system checks: the settings are read when a client is first used.
    done = manage(tmp_path, "shell", "-c", "from django_aio_request import clients; clients['billing']")
    assert done.returncode == 1
    message = done.stderr[done.stderr.index("InvalidSettings: ") :]
    assert message.startswith(f"InvalidSettings: AIO_REQUEST has {len(EVERY_KIND)} problems:")
    for check_id, text in EVERY_KIND.items():
        assert any(text in line and line.endswith(f"[{check_id}]") for line in message.splitlines()), check_id
    # A server loading AioRequestMiddleware (gunicorn, uvicorn: the WSGI/ASGI handler) stops the same way.
    done = manage(tmp_path, "shell", "-c", "from django.core.wsgi import get_wsgi_application; get_wsgi_application()")
    assert done.returncode == 1
    assert f"InvalidSettings: AIO_REQUEST has {len(EVERY_KIND)} problems:" in done.stderr
    # A command that uses no client is not stopped by the setting.
    assert manage(tmp_path, "shell", "-c", "print('fine')").stdout.splitlines()[-1] == "fine"


def test_manage_py_check_warns_of_a_breaker_cache_that_loses_counts_and_still_passes(tmp_path: Path) -> None:
    lossy = f"""
from settings.test import *
CACHES = {{**CACHES, "files": {{"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                               "LOCATION": {str(tmp_path / "cache")!r}}}}}
AIO_REQUEST = {{"CIRCUIT_BREAKER_STATE": "files"}}
"""
    done = manage(tmp_path, "check", settings=lossy)
    assert done.returncode == 0, done.stderr  # a warning: the state is shared, less exactly
    assert "(django_aio_request.W003) AIO_REQUEST['CIRCUIT_BREAKER_STATE'] names cache 'files'" in done.stderr
    assert "outcomes that processes flush at once are lost" in done.stderr


def test_a_valid_setting_passes_manage_py_check(tmp_path: Path) -> None:
    done = manage(tmp_path, "check", settings="from settings.test import *\n")
    assert done.returncode == 0, done.stderr
    assert "System check identified no issues" in done.stdout


def test_an_unset_setting_passes_and_none_written_out_is_an_error(tmp_path: Path) -> None:
    unset = "from settings.test import *\ndel AIO_REQUEST\n"
    done = manage(tmp_path, "check", settings=unset)
    assert done.returncode == 0, done.stderr
    # None is no way to leave the setting out: read as unset, a settings file that meant to turn
    # something off got every default with nothing said.
    done = manage(tmp_path, "check", settings="from settings.test import *\nAIO_REQUEST = None\n")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "(django_aio_request.E002) AIO_REQUEST must be a dict, not NoneType" in done.stderr
    assert "HINT: leave AIO_REQUEST unset (or set {}) for the defaults" in done.stderr
    done = manage(tmp_path, "shell", "-c", "from django_aio_request import clients; clients['billing']", settings=unset)
    assert "UnknownClientError: no client 'billing'" in done.stderr  # unset: no clients, and no settings error
    assert "configured: none; settings.AIO_REQUEST is not set\n" in done.stderr
    # A misspelt setting is named: the error said "configured: none" and nothing more (a review).
    misspelt = unset + "AIO_REQUESTS = {'CLIENTS': {'billing': {'ENDPOINT': 'http://billing:8080/'}}}\n"
    look_up = "from django_aio_request import clients; clients['billing']"
    done = manage(tmp_path, "shell", "-c", look_up, settings=misspelt)
    assert (
        "configured: none; settings.AIO_REQUEST is not set (settings.AIO_REQUESTS is set: a misspelling?)"
        in done.stderr
    )
    # The package's name as the setting's; a setting that only looks like it is no suggestion.
    other = unset + "API_REQUESTS = {}\nDJANGO_AIO_REQUEST = {}\n"
    done = manage(tmp_path, "shell", "-c", look_up, settings=other)
    assert "(settings.DJANGO_AIO_REQUEST is set: a misspelling?)" in done.stderr
    done = manage(tmp_path, "shell", "-c", look_up, settings=unset + "API_REQUESTS = {}\n")
    assert "configured: none; settings.AIO_REQUEST is not set\n" in done.stderr
    done = manage(
        tmp_path,
        "shell",
        "-c",
        "from django_aio_request import clients; clients['billing']",
        settings="from settings.test import *\nAIO_REQUEST = None\n",
    )
    assert "InvalidSettings: AIO_REQUEST has 1 problem:\n  AIO_REQUEST must be a dict, not NoneType" in done.stderr


def test_a_misspelt_setting_is_a_warning_of_check(tmp_path: Path, settings: Any) -> None:
    """``AIO_REQUESTS`` in place of ``AIO_REQUEST``: check passed it in silence, and the first look-up
    of a client raised (a review). It is W016 now; the setting's own name, or none like it, is not."""
    unset = "from settings.test import *\ndel AIO_REQUEST\n"
    misspelt = unset + "AIO_REQUESTS = {'CLIENTS': {'billing': {'ENDPOINT': 'http://billing:8080/'}}}\n"
    done = manage(tmp_path, "check", settings=misspelt)
    assert done.returncode == 0, done.stderr  # a warning: a setting of that name may be the project's own
    assert "(django_aio_request.W016) settings.AIO_REQUEST is not set, and settings.AIO_REQUESTS is" in done.stderr
    assert "HINT: rename settings.AIO_REQUESTS to settings.AIO_REQUEST" in done.stderr
    from django_aio_request.checks import check_misspelt_setting

    del settings.AIO_REQUEST
    assert check_misspelt_setting() == []
    settings.API_REQUESTS = {}
    settings.AIO_REQUEST_DEBUG = True  # settings of the project's own, named after it (a review)
    settings.MY_AIO_REQUEST_FLAG = True
    settings.AIO_REQUESTS_DEBUG = True
    assert check_misspelt_setting() == []
    settings.AIO_REQUESTS = {}
    assert [message.id for message in check_misspelt_setting()] == ["django_aio_request.W016"]
    settings.AIO_REQUEST = {}
    assert check_misspelt_setting() == []


def test_the_middleware_listed_twice_is_an_error_of_check(tmp_path: Path) -> None:
    """A base and a local settings file that each append AioRequestMiddleware: every request was
    counted twice and, under SHEDDING, held two slots of the limit (MAX_CONCURRENCY 1: every request
    refused; a review). E021 names the entries; once, by either of its paths, is no error."""
    twice = (
        "from settings.test import *\n"
        "MIDDLEWARE = [*MIDDLEWARE, 'django_aio_request.server.middleware.AioRequestMiddleware']\n"
    )
    done = manage(tmp_path, "check", settings=twice)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "(django_aio_request.E021) AioRequestMiddleware is in settings.MIDDLEWARE 2 times" in done.stderr
    assert "HINT: list it once, right after SecurityMiddleware" in done.stderr
    done = manage(tmp_path, "check", settings="from settings.test import *\n")
    assert done.returncode == 0, done.stderr
    assert "E021" not in done.stderr
    # A lazy string of its path counts: Django's handler makes a middleware of it (a review).
    lazily = (
        "from settings.test import *\nfrom django.utils.functional import lazy\n"
        "MIDDLEWARE = [*MIDDLEWARE, lazy(lambda: 'django_aio_request.middleware.AioRequestMiddleware', str)()]\n"
    )
    done = manage(tmp_path, "check", settings=lazily)
    assert "(django_aio_request.E021) AioRequestMiddleware is in settings.MIDDLEWARE 2 times" in done.stderr


def test_a_module_that_fails_as_it_is_imported_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "broken_classifier.py").write_text("raise RuntimeError('boom at import')\n")
    settings = (
        "from settings.test import *\n"
        "AIO_REQUEST = {'CLIENTS': {'billing': {'ENDPOINT': 'http://billing/',"
        " 'RESPONSE_CLASSIFIER': 'broken_classifier.Classifier'}}}\n"
    )
    done = manage(tmp_path, "check", settings=settings)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert (
        "(django_aio_request.E008) AIO_REQUEST['CLIENTS']['billing']['RESPONSE_CLASSIFIER'] cannot be imported:"
        " RuntimeError: boom" in (done.stderr)
    )


def test_manage_py_check_warns_of_a_shared_breaker_sampling_too_short_to_count_other_processes(
    tmp_path: Path,
) -> None:
    """W004, for each breaker below 1 s on a shared cache: such settings passed the check, and each
    process counted a quarter to a third of another's failures at 0.2 s (the measure:
    tests/breaker/test_cache_store.py::test_a_sampling_period_of_a_few_sync_rounds_counts_little_of_another_process_s_outcomes)."""
    short = """
from settings.test import *
AIO_REQUEST = {"CIRCUIT_BREAKER_STATE": "shared", "CLIENTS": {
    "billing": {"ENDPOINT": "http://billing:8080/", "CIRCUIT_BREAKER": {"SAMPLING_DURATION": 0.2}},
    "orders": {"ENDPOINT": "http://orders:8080/", "CIRCUIT_BREAKER": {"SAMPLING_DURATION": 1}},
    "stock": {"ENDPOINT": "http://stock:8080/", "CIRCUIT_BREAKER": {}},
}}
"""
    done = manage(tmp_path, "check", settings=short)
    assert done.returncode == 0, done.stderr  # a warning: the breakers work, each mostly on its own
    warnings = [line for line in done.stderr.splitlines() if "(django_aio_request.W004)" in line]
    assert warnings == [
        "settings.AIO_REQUEST: (django_aio_request.W004)"
        " AIO_REQUEST['CLIENTS']['billing']['CIRCUIT_BREAKER']['SAMPLING_DURATION'] is 0.2 s while"
        " CIRCUIT_BREAKER_STATE shares the counts through cache 'shared': another process's outcomes"
        " reach this one 0.1-0.2 s after they are made and count only for the rest of the period (a quarter to"
        " a third of them at 0.2 s), so each process trips mostly on its own"
    ], done.stderr
    assert "HINT: use a SAMPLING_DURATION of at least 1 s" in done.stderr
    # The same breaker with its state in each process's memory shares nothing: no W004.
    local = short.replace('"CIRCUIT_BREAKER_STATE": "shared"', '"CIRCUIT_BREAKER_STATE": "local"')
    done = manage(tmp_path, "check", settings=local)
    assert done.returncode == 0, done.stderr
    assert "W004" not in done.stderr


def test_a_retry_budget_ratio_above_1_is_a_warning_and_such_a_budget_refuses_no_retry() -> None:
    """W005: ``"RATIO": 20`` (20% meant) passed the check, and the budget then refused nothing: a
    client whose every call fails three times in a row made all its retries, as with no budget."""
    from django_aio_request.conf.building import build_retry_budget

    def budget(ratio: object) -> dict[str, object]:
        setting = {"RATIO": ratio, "MIN_PER_SECOND": 0}
        return {"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/", "RETRY_BUDGET": setting}}}

    found = messages(budget(20))
    assert found == [
        "django_aio_request.W005 AIO_REQUEST['CLIENTS']['billing']['RETRY_BUDGET']['RATIO'] is 20, above 1: it"
        " allows 20 extra attempts (retries and hedges) for every first attempt, so it refuses none while calls"
        " make fewer, and retries may multiply the load on a service that is failing | RATIO is a fraction of"
        " first attempts: 0.2 allows one extra attempt for every five first ones (20%)"
    ], found
    assert messages(budget(1)) == messages(budget(0.2)) == messages(budget(0)) == []
    # Shown as written, where a 6-digit form said "is 1, above 1" and "1e+09" (a review)
    assert "['RATIO'] is 1.0000001, above 1: it allows 1.0000001 extra" in messages(budget(1.0000001))[0]
    assert "['RATIO'] is 999999999, above 1" in messages(budget(999_999_999))[0]
    assert "['RATIO'] is 1.0000000000000002, above 1" in messages(budget(1.0000000000000002))[0]
    # What the warning says of it: 100 calls of 3 attempts each, every retry allowed at 20, a fifth at 0.2.
    for ratio, allowed in ((20, 200), (0.2, 20)):
        spend = build_retry_budget({"RATIO": ratio, "MIN_PER_SECOND": 0, "WINDOW_SECONDS": 10})
        assert spend is not None
        made = 0
        for _call in range(100):
            spend.record_first()
            made += spend.try_spend() + spend.try_spend()
        assert made == allowed, (ratio, made)
    with override_settings(AIO_REQUEST=budget(20)):
        call_command("check", "--tag", "django_aio_request")  # a warning: check passes


def test_every_id_in_use_is_listed_with_its_kind() -> None:
    from django_aio_request.conf.reader import CODES

    assert {check_id.split(".")[1] for check_id in EVERY_KIND} <= set(CODES)
    assert all(code.startswith(("E0", "W00")) for code in CODES)  # W010 onwards: checks of other settings


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (  # the floor named at once, not at a second try, and alone: it read "at least 0.1 > 0" (reviews)
            {"CIRCUIT_BREAKER_PUBLISH_INTERVAL": 0},
            "['CIRCUIT_BREAKER_PUBLISH_INTERVAL'] must be a number of seconds of at least 0.1, not 0",
        ),
        (  # passed, and an idle process kept 28% of a core busy with 290 queries a second (a review)
            {"CIRCUIT_BREAKER_PUBLISH_INTERVAL": 1e-6},
            "['CIRCUIT_BREAKER_PUBLISH_INTERVAL'] must be a number of seconds of at least 0.1, not 1e-06"
            " | each round reads and writes the database",
        ),
        (
            {"CIRCUIT_BREAKER_HISTORY_DAYS": "7"},
            "['CIRCUIT_BREAKER_HISTORY_DAYS'] must be a number of days > 0, not '7'",
        ),
    ],
)
def test_breaker_publishing_settings_are_checked(setting: dict[str, object], expected: str) -> None:
    found = messages(setting)
    assert len(found) == 1
    assert expected in found[0]


def test_breaker_publishing_settings_reach_the_publisher() -> None:
    from django_aio_request.breaker_publisher import history_days

    with override_settings(AIO_REQUEST={"CIRCUIT_BREAKER_HISTORY_DAYS": 2.5}):
        assert history_days() == 2.5


def test_max_response_size_from_settings_bounds_the_body(server: LoopbackServer) -> None:
    from django_aio_request import clients, get

    server.route("/big", lambda h: h.reply(200, b"x" * 5000))
    for limit, expected in ((1000, 489), (None, 200)):
        config = {"CLIENTS": {"c": {"ENDPOINT": server.url, "MAX_RESPONSE_SIZE": limit}}}
        with override_settings(AIO_REQUEST=config), clients["c"].request(get("big")) as response:
            assert response.status == expected


_NEVER_SENDS = "the client would send none"


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (
            {"TIMEOUT": 1.0, "LOW_TIMEOUT_THRESHOLD": 5.0},
            "['LOW_TIMEOUT_THRESHOLD'] (5.0) must be less than TIMEOUT (1.0)",
        ),
        ({"TIMEOUT": 1, "LOW_TIMEOUT_THRESHOLD": 1}, "['LOW_TIMEOUT_THRESHOLD'] (1.0) must be less than TIMEOUT (1.0)"),
        (
            {"LOW_TIMEOUT_THRESHOLD": 30},
            "['LOW_TIMEOUT_THRESHOLD'] (30.0) must be less than TIMEOUT (20.0, the default)",
        ),
        (
            {"TIMEOUT": 0.004},
            "['TIMEOUT'] (0.004) must be more than LOW_TIMEOUT_THRESHOLD (0.005, the default)",
        ),
    ],
)
def test_a_client_whose_threshold_is_not_below_its_timeout_is_an_error(
    client: dict[str, object], expected: str
) -> None:
    """Every call with no deadline of its own was a 408 and nothing was sent, and the check said nothing."""
    found = messages({"CLIENTS": {"billing": {**GOOD, **client}}})
    assert len(found) == 1, found
    assert found[0].startswith(f"django_aio_request.E009 AIO_REQUEST['CLIENTS']['billing']{expected} | "), found
    assert _NEVER_SENDS in found[0]


def test_a_client_whose_threshold_is_below_its_timeout_sends(server: LoopbackServer) -> None:
    from django_aio_request import clients, get

    server.route("/x", lambda h: h.reply(200))
    config = {"CLIENTS": {"c": {"ENDPOINT": server.url, "TIMEOUT": 1.0, "LOW_TIMEOUT_THRESHOLD": 0.9}}}
    assert messages(config) == []
    with override_settings(AIO_REQUEST=config), clients["c"].request(get("x")) as response:
        assert response.status == 200
    assert len(server.received("/x")) == 1


def test_manage_py_check_reports_a_client_that_can_never_send(tmp_path: Path) -> None:
    never = """
from settings.test import *
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
AIO_REQUEST = {"CLIENTS": {
    "a": {"ENDPOINT": "http://127.0.0.1:1/", "TIMEOUT": 1.0, "LOW_TIMEOUT_THRESHOLD": 5.0},
    "b": {"ENDPOINT": "http://127.0.0.1:1/", "TIMEOUT": 0.004},
}}
"""
    done = manage(tmp_path, "check", settings=never)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("settings.AIO_REQUEST: (")]
    assert errors == [
        "settings.AIO_REQUEST: (django_aio_request.E009) AIO_REQUEST['CLIENTS']['a']['LOW_TIMEOUT_THRESHOLD'] (5.0)"
        " must be less than TIMEOUT (1.0)",
        "settings.AIO_REQUEST: (django_aio_request.E009) AIO_REQUEST['CLIENTS']['b']['TIMEOUT'] (0.004)"
        " must be more than LOW_TIMEOUT_THRESHOLD (0.005, the default)",
    ]


def test_a_reader_that_fails_unexpectedly_is_an_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    from django_aio_request import checks

    def broken(value: object) -> object:
        raise RuntimeError("a case the reader did not foresee")

    monkeypatch.setattr(checks, "read_settings", broken)
    (message,) = checks.check_settings()
    assert message.id == "django_aio_request.E099"
    assert "RuntimeError: a case the reader did not foresee" in message.msg


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_every_check_reads_an_aio_request_that_is_any_mapping_as_a_dict() -> None:
    """The settings reader accepts any mapping for AIO_REQUEST (a types.MappingProxyType too): the
    checks that look at other settings through it (the breakers' cache, the database connect bound)
    report the same for it as for a dict."""
    setting = {
        "CIRCUIT_BREAKER_STATE": "shared",
        "DATABASE_STATEMENT_TIMEOUT": True,
        "CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080"}},  # no trailing slash: W-level, named too
    }
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {"BACKEND": "no.such.CacheBackend"},
    }
    databases = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "shop"}}
    found = {}
    for kind in (dict, types.MappingProxyType):
        with override_settings(AIO_REQUEST=kind(setting), CACHES=caches, DATABASES=databases):
            found[kind] = sorted(str(m.id) for m in checks.run_checks(tags=["django_aio_request"]))
    assert {"django_aio_request.E008", "django_aio_request.W011"} <= set(found[dict]), found
    assert found[types.MappingProxyType] == found[dict]


@pytest.mark.parametrize("entry", [["redis://127.0.0.1:6379/0"], "redis://127.0.0.1:6379/0"])
def test_a_breaker_cache_entry_that_is_no_mapping_is_e006_with_the_other_problems(entry: object) -> None:
    """CIRCUIT_BREAKER_STATE naming a CACHES entry that is a list (or a URL) made the reader raise
    AttributeError: check reported E099 ("a bug") and hid every other problem."""
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, "b": entry}
    aio_request = {"CIRCUIT_BREAKER_STATE": "b", "TIMEOUT": -1}
    with override_settings(CACHES=caches, AIO_REQUEST=aio_request):
        found = check_settings()
    by_id = {message.id: message.msg for message in found}
    assert set(by_id) == {"django_aio_request.E006", "django_aio_request.E003"}, by_id
    assert "names settings.CACHES['b'], which is a" in by_id["django_aio_request.E006"]


@pytest.mark.parametrize(
    ("shedding", "key"),
    [
        ({"MIN_LIMIT": 10, "MAX_LIMIT": 5}, "MIN_LIMIT"),
        ({"MAX_CONCURRENCY": 4, "MIN_LIMIT": 2}, "MIN_LIMIT"),
        ({"MAX_CONCURRENCY": 4, "MAX_LIMIT": 8}, "MAX_LIMIT"),
        ({"MAX_CONCURRENCY": 4, "LATENCY_TOLERANCE": 2}, "LATENCY_TOLERANCE"),
        ({"MAX_CONCURRENCY": 4, "PROBE_INTERVAL": 10}, "PROBE_INTERVAL"),
    ],
)
def test_shedding_settings_that_contradict_each_other_are_e009(shedding: dict[str, int], key: str) -> None:
    """They were reported as E002 ("a value of the wrong type"), though each value had the right type:
    docs/checks.md lists contradictions under E009."""
    with override_settings(AIO_REQUEST={"SHEDDING": shedding}):
        found = check_settings()
    assert [(message.id, message.msg.split(" ")[0]) for message in found] == [
        ("django_aio_request.E009", f"AIO_REQUEST['SHEDDING'][{key!r}]")
    ]


def test_shedding_without_max_concurrency_is_valid_and_a_removed_key_is_e002() -> None:
    with override_settings(AIO_REQUEST={"SHEDDING": {"QUEUE_TIMEOUT": 0.5}}):
        assert check_settings() == []  # MAX_CONCURRENCY is optional: the limit is then learned
    with override_settings(AIO_REQUEST={"SHEDDING": {"HIGH_PRIORITY_RESERVE": 0.6}}):
        (removed,) = check_settings()
    assert removed.id == "django_aio_request.E002"
    assert "was removed" in removed.msg


class MisspeltClassifier(ResponseClassifier):
    """``classify`` misspelt: the class stays abstract, and ``cls()`` raises TypeError."""

    def clasify(self, response: Response) -> ResponseVerdict:
        return ResponseVerdict.ACCEPT


@pytest.mark.parametrize(
    "path", ["tests.conf.test_settings_checks.MisspeltClassifier", "django_aio_request.ResponseClassifier"]
)
def test_an_abstract_classifier_is_e008(path: str) -> None:
    """It passed the check, and the first use of the client raised TypeError ("Can't instantiate
    abstract class"): a 500 in every view that used it."""
    (found,) = messages({"CLIENTS": {"billing": {**GOOD, "RESPONSE_CLASSIFIER": path}}})
    assert found.startswith("django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['RESPONSE_CLASSIFIER'] names")
    assert "is abstract: it does not define classify" in found


def test_manage_py_check_reports_an_abstract_classifier_and_the_client_is_not_built(tmp_path: Path) -> None:
    abstract = """
from settings.test import *
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
AIO_REQUEST = {"CLIENTS": {
    "a": {"ENDPOINT": "http://127.0.0.1:1/",
          "RESPONSE_CLASSIFIER": "tests.conf.test_settings_checks.MisspeltClassifier"},
    "b": {"ENDPOINT": "http://127.0.0.1:1/", "RESPONSE_CLASSIFIER": "django_aio_request.ResponseClassifier"},
}}
"""
    done = manage(tmp_path, "check", settings=abstract)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("settings.AIO_REQUEST: (")]
    assert [line.split(" ")[2] for line in errors] == [
        "AIO_REQUEST['CLIENTS']['a']['RESPONSE_CLASSIFIER']",
        "AIO_REQUEST['CLIENTS']['b']['RESPONSE_CLASSIFIER']",
    ], done.stderr
    assert all("(django_aio_request.E008)" in line for line in errors)
    assert "HINT: MisspeltClassifier is abstract: it does not define classify" in done.stderr
    done = manage(tmp_path, "shell", "-c", "from django_aio_request import clients; clients['a']", settings=abstract)
    assert "InvalidSettings: AIO_REQUEST has 2 problems:" in done.stderr
    assert "Can't instantiate" not in done.stderr


class HeaderEnricher:
    """A class-based enricher: settings name an instance of it (``header_enricher``), not the class."""

    def __call__(self, request: Request) -> Request:
        return request.with_headers({"X-Enriched": "yes"})


header_enricher = HeaderEnricher()


class _CallsAsEnricher(type):
    def __call__(cls, request: Any) -> Any:
        return request.with_headers({"X-Enriched": "by-class"})


class ClassEnricher(metaclass=_CallsAsEnricher):
    """A class whose metaclass makes calling it enrich the request: a valid enricher."""


def test_a_request_enricher_class_whose_metaclass_calls_as_an_enricher_is_taken(server: LoopbackServer) -> None:
    """E008 refused every class, this one too, whose call returns the Request."""
    from django_aio_request import clients, get

    server.route("/x", lambda h: h.reply(200))
    config = {"CLIENTS": {"c": {"ENDPOINT": server.url, "REQUEST_ENRICHER": f"{__name__}.ClassEnricher"}}}
    assert messages(config) == []
    with override_settings(AIO_REQUEST=config), clients["c"].request(get("x")) as response:
        assert response.status == 200
    assert server.received("/x")[0].headers["X-Enriched"] == "by-class"


def test_a_request_enricher_naming_a_class_is_e008_and_an_instance_of_it_works(server: LoopbackServer) -> None:
    """A class is callable, so it passed the check; then every call raised TypeError
    ("HeaderEnricher() takes no arguments"), the client calling the class with the Request."""
    from django_aio_request import clients, get

    (found,) = messages(
        {"CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": "tests.conf.test_settings_checks.HeaderEnricher"}}}
    )
    assert found.startswith("django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['REQUEST_ENRICHER'] names")
    assert "| HeaderEnricher is a class:" in found
    assert "enricher = HeaderEnricher()" in found
    server.route("/x", lambda h: h.reply(200))
    config = {
        "CLIENTS": {
            "c": {"ENDPOINT": server.url, "REQUEST_ENRICHER": "tests.conf.test_settings_checks.header_enricher"}
        }
    }
    assert messages(config) == []
    with override_settings(AIO_REQUEST=config), clients["c"].request(get("x")) as response:
        assert response.status == 200
    (received,) = server.received("/x")
    assert received.headers["X-Enriched"] == "yes"


def test_a_module_that_exits_as_it_is_imported_is_e008_and_hides_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SystemExit is no Exception: a module the settings name that called sys.exit() as it was imported
    ended manage.py check, migrate and the app's command at once, silently, with its exit code."""
    (tmp_path / "exits_on_import.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = messages({"TIMEOUT": -1, "CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": "exits_on_import.f"}}})
    assert sorted(m.split(" ", 1)[0] for m in found) == ["django_aio_request.E003", "django_aio_request.E008"], found
    assert any("['REQUEST_ENRICHER'] cannot be imported: SystemExit: 3" in m for m in found), found


def test_a_module_that_raises_another_base_exception_as_it_is_imported_is_e008(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BaseException of the module's own (neither Exception nor SystemExit) escaped the check:
    manage.py check ended with its traceback instead of the list of problems."""
    (tmp_path / "interrupts_on_import.py").write_text(
        "class Interrupted(BaseException):\n    pass\n\nraise Interrupted('stopped')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = messages({"TIMEOUT": -1, "SHEDDING": {"PRIORITY_POLICY": "interrupts_on_import.policy"}})
    assert sorted(m.split(" ", 1)[0] for m in found) == ["django_aio_request.E003", "django_aio_request.E008"], found
    assert any("['PRIORITY_POLICY'] cannot be imported: Interrupted: stopped" in m for m in found), found


def test_a_module_whose_error_cannot_be_printed_is_e008_and_hides_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module raises an exception of its own whose ``__str__`` has a bug: writing the E008's message
    raised in turn, and the whole setting was one E099 that hid the other problems (a review)."""
    (tmp_path / "fails_badly_on_import.py").write_text(
        "class ConfigError(Exception):\n"
        "    def __str__(self):\n"
        "        return 'missing ' + self.kye  # a typo: AttributeError\n\n"
        "raise ConfigError()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = messages({"TIMEOUT": -1, "CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": "fails_badly_on_import.f"}}})
    assert sorted(m.split(" ", 1)[0] for m in found) == ["django_aio_request.E003", "django_aio_request.E008"], found
    assert any(
        "cannot be imported: ConfigError: <its message could not be shown: AttributeError>" in m for m in found
    ), found


def test_an_enricher_whose_signature_raises_is_taken_and_hides_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: LoopbackServer
) -> None:
    """An enricher object whose ``__signature__`` raises has no signature to read, as a builtin has:
    taken, and called. The check's look at it raised, and the setting was one E099 hiding the rest."""
    from django_aio_request import clients, get

    (tmp_path / "odd_enricher.py").write_text(
        "class Enricher:\n"
        "    @property\n"
        "    def __signature__(self):\n"
        "        raise RuntimeError('no signature here')\n\n"
        "    def __call__(self, request):\n"
        "        return request.with_headers({'X-Enriched': 'odd'})\n\n"
        "enrich = Enricher()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    server.route("/x", lambda h: h.reply(200))
    client = {**GOOD, "ENDPOINT": server.url, "REQUEST_ENRICHER": "odd_enricher.enrich"}
    found = messages({"TIMEOUT": -1, "CLIENTS": {"billing": client}})
    assert [m.split(" ", 1)[0] for m in found] == ["django_aio_request.E003"], found
    with (
        override_settings(AIO_REQUEST={"CLIENTS": {"billing": client}}),
        clients["billing"].request(get("x")) as response,
    ):
        assert response.status == 200
    (received,) = server.received("/x")
    assert received.headers["X-Enriched"] == "odd"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text either")


class _Uncomparable:
    """A strategy NAME whose comparison raises an exception that cannot be printed."""

    def __eq__(self, other: object) -> bool:
        raise _Unprintable

    __hash__ = object.__hash__


def test_a_value_whose_error_cannot_be_printed_is_reported_not_a_traceback() -> None:
    """check_settings wrote the reader's unforeseen error with ``{error}``: one whose ``__str__``
    raises ended ``manage.py check`` with a traceback (a review)."""
    found = messages({"CLIENTS": {"billing": {**GOOD, "SAFE_METHOD_STRATEGY": {"NAME": _Uncomparable()}}}})
    assert len(found) == 1, found
    assert found[0].startswith("django_aio_request.E099"), found
    assert "_Unprintable: <its message could not be shown: RuntimeError>" in found[0], found


def test_a_key_that_fails_as_it_is_read_is_e099_at_that_key_and_hides_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a key's reader did not foresee (here a reader with a bug) is reported at that key, and every
    other key is read and reported as ever: the whole setting was one E099 naming the exception."""
    from django_aio_request.conf import schema

    def broken(reader: Any, path: str, value: Any) -> Any:
        raise RuntimeError("a case the reader did not foresee")

    monkeypatch.setitem(schema.CLIENT_SCHEMA, "TIMEOUT", (broken, 20.0))
    found = messages({"TIMEOUT": -1, "CLIENTS": {"billing": {**GOOD, "TIMEOUT": 5.0, "MAX_WORKERS": "many"}}})
    assert sorted(m.split(" AIO_REQUEST", 1)[0] for m in found) == [
        "django_aio_request.E003",
        "django_aio_request.E003",
        "django_aio_request.E099",
    ], found
    assert any(
        m.startswith(
            "django_aio_request.E099 AIO_REQUEST['CLIENTS']['billing']['TIMEOUT'] could not be read:"
            " RuntimeError: a case the reader did not foresee"
        )
        for m in found
    ), found
    assert any("['billing']['MAX_WORKERS']" in m for m in found), found


def test_a_strategy_that_holds_itself_is_reported_with_the_other_problems() -> None:
    """It recursed to Python's limit: an E099 ("a bug to report", RecursionError) that hid the rest."""
    looped: dict[str, Any] = {"NAME": "retry_until_deadline_expired"}
    looped["STRATEGY"] = looped
    found = messages({"TIMEOUT": -1, "CLIENTS": {"billing": {**GOOD, "SAFE_METHOD_STRATEGY": looped}}})
    assert len(found) == 2, found
    assert any("nests strategies more than 8 deep" in m for m in found), found
    assert any(m.startswith("django_aio_request.E003 AIO_REQUEST['TIMEOUT']") for m in found), found


def test_a_request_enricher_naming_an_enum_class_is_e008() -> None:
    """Calling an Enum class looks up a member: ``Priority`` passed as an enricher (its metaclass has
    a ``__call__`` of its own) and every call raised ValueError ("... is not a valid Priority")."""
    (found,) = messages({"CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": "django_aio_request.Priority"}}})
    assert found.startswith("django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['REQUEST_ENRICHER'] names")
    assert "| Priority is a class, an Enum: calling it with each Request looks up a member" in found


_SPLIT = {"NAME": "sequential", "ATTEMPTS_COUNT": 3, "DEADLINE_PROVIDER": {"NAME": "split"}}


@pytest.mark.parametrize(
    ("client", "where", "expected"),
    [
        (
            {"TIMEOUT": 0.25, "LOW_TIMEOUT_THRESHOLD": 0.1, "SAFE_METHOD_STRATEGY": _SPLIT},
            "['SAFE_METHOD_STRATEGY']['DEADLINE_PROVIDER']",
            "splits TIMEOUT (0.25) among 3 attempts: the first gets 0.0833333 s, not more than"
            " LOW_TIMEOUT_THRESHOLD (0.1)",
        ),
        (  # the share equal to the threshold: less is left by the time attempt 0 is sent
            {"TIMEOUT": 0.2, "LOW_TIMEOUT_THRESHOLD": 0.1, "UNSAFE_METHOD_STRATEGY": {**_SPLIT, "ATTEMPTS_COUNT": 2}},
            "['UNSAFE_METHOD_STRATEGY']['DEADLINE_PROVIDER']",
            "splits TIMEOUT (0.2) among 2 attempts: the first gets 0.1 s",
        ),
        (  # ATTEMPTS_COUNT_TO_SPLIT: only that many share
            {
                "TIMEOUT": 1,
                "LOW_TIMEOUT_THRESHOLD": 0.3,
                "SAFE_METHOD_STRATEGY": {
                    **_SPLIT,
                    "ATTEMPTS_COUNT": 10,
                    "DEADLINE_PROVIDER": {"NAME": "split", "ATTEMPTS_COUNT_TO_SPLIT": 4},
                },
            },
            "['SAFE_METHOD_STRATEGY']['DEADLINE_PROVIDER']",
            "splits TIMEOUT (1.0) among 4 attempts: the first gets 0.25 s",
        ),
        (  # retry_until_deadline_expired hands its STRATEGY the whole deadline
            {
                "TIMEOUT": 0.25,
                "LOW_TIMEOUT_THRESHOLD": 0.1,
                "SAFE_METHOD_STRATEGY": {"NAME": "retry_until_deadline_expired", "STRATEGY": _SPLIT},
            },
            "['SAFE_METHOD_STRATEGY']['STRATEGY']['DEADLINE_PROVIDER']",
            "splits TIMEOUT (0.25) among 3 attempts",
        ),
        (  # the default TIMEOUT (20 s)
            {"LOW_TIMEOUT_THRESHOLD": 0.2, "SAFE_METHOD_STRATEGY": {**_SPLIT, "ATTEMPTS_COUNT": 100}},
            "['SAFE_METHOD_STRATEGY']['DEADLINE_PROVIDER']",
            "splits TIMEOUT (20.0) among 100 attempts: the first gets 0.2 s",
        ),
        (  # the default LOW_TIMEOUT_THRESHOLD (0.005 s)
            {"TIMEOUT": 0.01, "SAFE_METHOD_STRATEGY": {**_SPLIT, "ATTEMPTS_COUNT": 2}},
            "['SAFE_METHOD_STRATEGY']['DEADLINE_PROVIDER']",
            "splits TIMEOUT (0.01) among 2 attempts: the first gets 0.005 s, not more than"
            " LOW_TIMEOUT_THRESHOLD (0.005)",
        ),
    ],
)
def test_a_split_deadline_whose_first_share_is_not_above_the_threshold_is_e009(
    client: dict[str, object], where: str, expected: str
) -> None:
    """TIMEOUT 0.25 split among 3 attempts gives attempt 0 0.083 s: with LOW_TIMEOUT_THRESHOLD 0.1 every
    call was a 408 with X-Do-Not-Retry, nothing was sent, and the check said nothing."""
    (found,) = messages({"CLIENTS": {"billing": {**GOOD, **client}}})
    assert found.startswith(f"django_aio_request.E009 AIO_REQUEST['CLIENTS']['billing']{where} {expected}"), found
    assert "would send none" in found


@pytest.mark.parametrize(
    "strategy",
    [
        {**_SPLIT, "DEADLINE_PROVIDER": {"NAME": "split", "ATTEMPTS_COUNT_TO_SPLIT": 2}},  # 0.125 s each
        {**_SPLIT, "DEADLINE_PROVIDER": {"NAME": "pass_through"}},
        {"NAME": "parallel", "ATTEMPTS_COUNT": 3},
        {**_SPLIT, "ATTEMPTS_COUNT": 1},
    ],
)
def test_a_first_attempt_with_more_than_the_threshold_is_valid_and_sends(
    server: LoopbackServer, strategy: dict[str, object]
) -> None:
    from django_aio_request import clients, get

    server.route("/x", lambda h: h.reply(200))
    config = {
        "CLIENTS": {
            "c": {
                "ENDPOINT": server.url,
                "TIMEOUT": 0.25,
                "LOW_TIMEOUT_THRESHOLD": 0.1,
                "SAFE_METHOD_STRATEGY": strategy,
            }
        }
    }
    assert messages(config) == []
    with override_settings(AIO_REQUEST=config), clients["c"].request(get("x")) as response:
        assert response.status == 200
    sent = len(server.received("/x"))
    if strategy["NAME"] == "parallel":
        # Its first hedge is due 40-60 ms in (the default linear delays): a fresh client's first
        # call on a loaded CI machine took longer, and its hedge went too.
        assert sent >= 1
    else:
        assert sent == 1


def test_manage_py_check_reports_a_split_deadline_that_never_sends(tmp_path: Path) -> None:
    never = """
from settings.test import *
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
AIO_REQUEST = {"CLIENTS": {"billing": {
    "ENDPOINT": "http://127.0.0.1:1/", "TIMEOUT": 0.25, "LOW_TIMEOUT_THRESHOLD": 0.1,
    "SAFE_METHOD_STRATEGY": {"NAME": "sequential", "ATTEMPTS_COUNT": 3, "DEADLINE_PROVIDER": {"NAME": "split"}},
}}}
"""
    done = manage(tmp_path, "check", settings=never)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("settings.AIO_REQUEST: (")]
    assert errors == [
        "settings.AIO_REQUEST: (django_aio_request.E009) AIO_REQUEST['CLIENTS']['billing']['SAFE_METHOD_STRATEGY']"
        "['DEADLINE_PROVIDER'] splits TIMEOUT (0.25) among 3 attempts: the first gets 0.0833333 s, not more than"
        " LOW_TIMEOUT_THRESHOLD (0.1)"
    ]


@pytest.mark.parametrize(
    ("client", "where", "kind", "example"),
    [
        ({"SAFE_METHOD_STRATEGY": "parallel"}, "['SAFE_METHOD_STRATEGY']", "str", "{'NAME': 'parallel'}"),
        ({"UNSAFE_METHOD_STRATEGY": None}, "['UNSAFE_METHOD_STRATEGY']", "NoneType", "{'NAME': 'single'}"),
        (
            {"SAFE_METHOD_STRATEGY": {"NAME": "parallel", "DELAYS": ["constant"]}},
            "['SAFE_METHOD_STRATEGY']['DELAYS']",
            "list",
            "{'NAME': 'constant'}",
        ),
        (
            {"SAFE_METHOD_STRATEGY": {"NAME": "sequential", "DEADLINE_PROVIDER": "split"}},
            "['SAFE_METHOD_STRATEGY']['DEADLINE_PROVIDER']",
            "str",
            "{'NAME': 'split'}",
        ),
        (
            {"SAFE_METHOD_STRATEGY": {"NAME": "retry_until_deadline_expired", "STRATEGY": "single"}},
            "['SAFE_METHOD_STRATEGY']['STRATEGY']",
            "str",
            "{'NAME': 'single'}",
        ),
    ],
)
def test_a_strategy_delays_or_deadline_provider_that_is_no_dict_is_e002_at_its_key(
    client: dict[str, object], where: str, kind: str, example: str
) -> None:
    """ "SAFE_METHOD_STRATEGY": "parallel" (or None) was E005 "['SAFE_METHOD_STRATEGY']['NAME'] is None,
    not a known name", a key that was never written: a value of the wrong type is E002, at its key."""
    (found,) = messages({"CLIENTS": {"billing": {**GOOD, **client}}})
    assert found.startswith(
        f"django_aio_request.E002 AIO_REQUEST['CLIENTS']['billing']{where} must be a dict, not {kind} | "
        f"a dict with a NAME, e.g. {example}; NAME allowed: "
    ), found


def enricher_of_two(request: Any, extra: Any) -> Any:
    return request


def policy_of_one(request: Any) -> Any:
    return None


def policy_of_any(*args: Any, **kwargs: Any) -> Any:
    return None


def _traced(function: Any) -> Any:
    @functools.wraps(function)
    def wrapper(request: Any, priority: Any) -> Any:
        return function(request, priority, tracer="t")

    return wrapper


@_traced
def traced_policy(request: Any, priority: Any, tracer: str) -> Any:
    return priority


def test_an_enricher_or_policy_that_cannot_take_its_arguments_is_e008(tmp_path: Path) -> None:
    """A function with the wrong parameters passed the check; then every call raised TypeError (a
    client's calls with REQUEST_ENRICHER; every request under load shedding, a 500, with PRIORITY_POLICY)."""
    (found,) = messages({"CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": f"{__name__}.enricher_of_two"}}})
    assert found.startswith("django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['REQUEST_ENRICHER'] names")
    assert "enricher_of_two(request: Any, extra: Any) -> Any cannot be called with the Request alone" in found
    (found,) = messages({"SHEDDING": {"PRIORITY_POLICY": f"{__name__}.policy_of_one"}})
    assert "AIO_REQUEST['SHEDDING']['PRIORITY_POLICY']" in found
    assert "policy_of_one(request: Any) -> Any cannot be called with (request, claimed priority)" in found
    assert messages({"SHEDDING": {"PRIORITY_POLICY": f"{__name__}.policy_of_any"}}) == []
    # Called as its functools.wraps wrapper says, though the function it wraps takes one more.
    assert messages({"SHEDDING": {"PRIORITY_POLICY": f"{__name__}.traced_policy"}}) == []
    assert messages({"CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": f"{__name__}.header_enricher"}}}) == []
    # As users run it: manage.py check in a subprocess says so and exits non-zero.
    bad = f"""
from settings.test import *
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}}
AIO_REQUEST = {{"SHEDDING": {{"PRIORITY_POLICY": "{__name__}.policy_of_one"}}}}
"""
    done = manage(tmp_path, "check", settings=bad)
    assert done.returncode != 0
    assert "cannot be called with (request, claimed priority)" in done.stderr


async def async_enricher(request: Any) -> Any:
    return request


class AsyncCallEnricher:
    async def __call__(self, request: Any) -> Any:
        return request


async_call_enricher = AsyncCallEnricher()


class AsyncClassifier(ResponseClassifier):
    async def classify(self, response: Any) -> Any:  # type: ignore[override]
        return ResponseVerdict.ACCEPT


async def _classify_with(self: Any, response: Any, verdict: Any) -> Any:
    return verdict


class AsyncPartialClassifier(ResponseClassifier):
    classify = functools.partialmethod(_classify_with, verdict=ResponseVerdict.ACCEPT)


def test_an_async_enricher_or_classifier_is_e008() -> None:
    """The client calls both on the call's thread and never awaits them: an ``async def`` enricher
    passed the check and every call raised TypeError ("returned coroutine, not a Request"); an
    async ``classify`` passed too, its coroutine was taken for the verdict, and the breaker opened
    on a healthy endpoint. (SHEDDING's PRIORITY_POLICY may be async: the middleware awaits it.)"""
    for enricher in ("async_enricher", "async_call_enricher"):
        (found,) = messages({"CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": f"{__name__}.{enricher}"}}})
        assert found.startswith("django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['REQUEST_ENRICHER']")
        assert "is async (async def)" in found
    for classifier in ("AsyncClassifier", "AsyncPartialClassifier"):
        (found,) = messages({"CLIENTS": {"billing": {**GOOD, "RESPONSE_CLASSIFIER": f"{__name__}.{classifier}"}}})
        assert found.startswith("django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['RESPONSE_CLASSIFIER']")
        assert f"{classifier}.classify is async (async def)" in found


class NoResponseClassifier(ResponseClassifier):
    def classify(self) -> Any:  # type: ignore[override]
        return ResponseVerdict.ACCEPT


class ExtraArgumentClassifier(ResponseClassifier):
    def classify(self, response: Any, retried: Any) -> Any:  # type: ignore[override]
        return ResponseVerdict.ACCEPT


class StaticClassifier(ResponseClassifier):
    @staticmethod
    def classify(response: Any) -> Any:
        return ResponseVerdict.ACCEPT


class ClassMethodClassifier(ResponseClassifier):
    @classmethod
    def classify(cls, response: Any) -> Any:
        return ResponseVerdict.ACCEPT


class LooseClassifier(ResponseClassifier):
    def classify(self, *args: Any, strict: bool = False) -> Any:
        return ResponseVerdict.ACCEPT


def test_a_classifier_whose_classify_cannot_take_the_response_is_e008(tmp_path: Path) -> None:
    """``classify(self)`` passed the check, and every call raised TypeError ("takes 1 positional
    argument but 2 were given"); a classify the client can call as it does passes."""
    for classifier, error in (
        ("NoResponseClassifier", "too many positional arguments"),
        ("ExtraArgumentClassifier", "missing a required argument: 'retried'"),
    ):
        (found,) = messages({"CLIENTS": {"billing": {**GOOD, "RESPONSE_CLASSIFIER": f"{__name__}.{classifier}"}}})
        assert found.startswith("django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['RESPONSE_CLASSIFIER']")
        assert f"{classifier}.classify(self" in found, found
        assert f"cannot be called with a Response, as the client calls it: {error}" in found, found
    for classifier in ("StaticClassifier", "ClassMethodClassifier", "LooseClassifier"):
        assert messages({"CLIENTS": {"billing": {**GOOD, "RESPONSE_CLASSIFIER": f"{__name__}.{classifier}"}}}) == []
    settings = f"""
from settings.test import *
AIO_REQUEST = {{"CLIENTS": {{"billing": {{"ENDPOINT": "http://127.0.0.1:1/",
    "RESPONSE_CLASSIFIER": "{__name__}.NoResponseClassifier"}}}}}}
"""
    done = manage(tmp_path, "check", settings=settings)
    assert done.returncode == 1, done.stderr
    assert "(django_aio_request.E008) AIO_REQUEST['CLIENTS']['billing']['RESPONSE_CLASSIFIER']" in done.stderr


def generator_enricher(request: Any) -> Any:
    yield request


def test_a_generator_enricher_is_e008() -> None:
    """A plain ``def`` that yields passed the check (async ones were E008), and every call raised
    TypeError ("returned generator, not a Request": a review)."""
    (found,) = messages({"CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": f"{__name__}.generator_enricher"}}})
    assert found.startswith("django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['REQUEST_ENRICHER']")
    assert "generator_enricher is a generator function (it yields)" in found


def test_lazy_strings_read_as_the_text_they_stand_for() -> None:
    """gettext_lazy / lazy(..., str) values are no str and print as one: they were refused with
    messages that contradicted themselves ("['PRIORITY'] is 'high', not a priority")."""
    from django.utils.functional import lazy
    from django.utils.translation import gettext_lazy

    from django_aio_request.conf.schema import read_settings

    text = lazy(str, str)
    setting = {
        "SERVICE_NAME": gettext_lazy("orders"),
        "PRIORITY": text("high"),
        "CLIENTS": {text("billing"): {"ENDPOINT": text("http://billing:8080/"), "PRIORITY": text("low")}},
    }
    assert messages(setting) == []
    parsed, _ = read_settings(setting)
    assert parsed is not None
    assert (parsed.service_name, parsed.priority.value) == ("orders", "high")
    assert parsed.clients["billing"].endpoint == "http://billing:8080/"
    # In a set too (KNOWN_SERVICES may be one): its lazy names were refused, "not 'billing'".
    for kind in (set, frozenset, list):
        assert messages({"KNOWN_SERVICES": kind([text("billing"), "orders"])}) == [], kind


HOSTILE_OTHER_SETTINGS = {
    "engine": "DATABASES = {**DATABASES, 'other': {'ENGINE': Hostile(), 'NAME': 'x'}}\n",
    "connect-timeout": (
        "DATABASES = {**DATABASES, 'other': {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'x',"
        " 'OPTIONS': {'connect_timeout': Hostile()}}}\n"
    ),
    "aio-request-get": "AIO_REQUEST = HostileGet(AIO_REQUEST)\n",
}


@pytest.mark.parametrize("case", list(HOSTILE_OTHER_SETTINGS), ids=list(HOSTILE_OTHER_SETTINGS))
def test_objects_that_fail_when_read_are_reported_not_a_traceback(tmp_path: Path, case: str) -> None:
    """docs/checks.md: with any error ``manage.py check`` exits 1 and prints no traceback. A review
    made three of the checks of other settings raise: an ENGINE or a connect_timeout whose ``str()``
    raises, an AIO_REQUEST whose ``get()`` raises."""
    (tmp_path / "hostile_settings.py").write_text(
        "from settings.test import *\n"
        "class Hostile:\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no text here')\n"
        "class HostileGet(dict):\n"
        "    def get(self, *args):\n"
        "        raise RuntimeError('no get here')\n"
        "AIO_REQUEST = {**AIO_REQUEST, 'DATABASE_STATEMENT_TIMEOUT': True, 'CIRCUIT_BREAKER_STATE': 'default'}\n"
        + HOSTILE_OTHER_SETTINGS[case]
    )
    done = run_manage("check", "--tag", "django_aio_request", settings="hostile_settings", path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "django_aio_request.E099" in done.stderr


def test_a_url_with_credentials_where_a_cache_alias_belongs_is_never_repeated(tmp_path: Path) -> None:
    # An easy slip: the Redis URL itself where the alias of a cache of CACHES belongs. check's E006
    # and the InvalidSettings of a client's first use (a server's startup log) repeated it whole.
    secret = "hunter2-s3cr3t"
    url_as_alias = f"""
from settings.test import *
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}}
AIO_REQUEST = {{
    "CIRCUIT_BREAKER_STATE": "redis://:{secret}@redis.internal:6379/0?ssl_cert_reqs=none",
    "CLIENTS": {{"billing": {{"ENDPOINT": "http://127.0.0.1:1/", "CIRCUIT_BREAKER": {{}}}}}},
}}
"""
    done = manage(tmp_path, "check", settings=url_as_alias)
    assert done.returncode == 1, done.stderr
    assert "AIO_REQUEST['CIRCUIT_BREAKER_STATE']" in done.stderr
    assert "'redis://***@redis.internal:6379/0?***'" in done.stderr  # where the value went wrong, still told
    assert "(django_aio_request.E006)" in done.stderr
    first_use = "from django_aio_request import clients; clients['billing']"
    used = manage(tmp_path, "shell", "-c", first_use, settings=url_as_alias)
    assert "InvalidSettings: AIO_REQUEST has 1 problem:" in used.stderr
    assert secret not in done.stdout + done.stderr + used.stdout + used.stderr


_SECRET_URL = "redis://:hunter2-s3cr3t@redis.internal:6379/0"


def _nested(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "setting",
    [
        {"CIRCUIT_BREAKER_STATE": [_SECRET_URL]},
        {"CIRCUIT_BREAKER_STATE": (_SECRET_URL,)},
        {"CIRCUIT_BREAKER_STATE": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _SECRET_URL}},
        {"CIRCUIT_BREAKER_STATE": _SECRET_URL.encode()},
        {"CLIENTS": {"https://user:hunter2-s3cr3t@x.example/" + "a" * 100: {"ENDPOINT": "http://127.0.0.1:1/"}}},
        {"CLIENTS": {"a": {"ENDPOINT": "http://127.0.0.1:1/", "PRIORITY": [_SECRET_URL]}}},
        {"CLIENTS": {"a": {"ENDPOINT": "http://127.0.0.1:1/", ("k", _SECRET_URL): 1}}},
        {"CLIENTS": {"https://billing:hunter2-s3cr3t-abcdefghijklmnop@x.example/" + "a" * 100: {}}},
        {
            "CLIENTS": {
                "a": {"ENDPOINT": "http://127.0.0.1:1/", "REQUEST_ENRICHER": "https://svc:hunter2@auth.internal/t"}
            }
        },
        {"CIRCUIT_BREAKER_STATE": {"BACKEND": "django_redis.cache.RedisCache", "OPTIONS": {"PASSWORD": "hunter2"}}},
        {"CIRCUIT_BREAKER_STATE": "redis://:hunter2@redis:6379/0".replace("@", "\uff20").encode()},
        {"CIRCUIT_BREAKER_STATE": _nested([_SECRET_URL], 12)},
        {"CIRCUIT_BREAKER_STATE": collections.deque([_SECRET_URL])},
        {"CIRCUIT_BREAKER_STATE": "redis:6379/0?password=hunter2"},
    ],
    ids=[
        "list",
        "tuple",
        "a cache's entry",
        "bytes",
        "a long client name",
        "a list elsewhere",
        "a key",
        "a long client name with its @ past the cut",
        "a dotted path",
        "a django-redis entry with its password in OPTIONS",
        "bytes with a full-width @",
        "a list nested 12 deep",
        "a deque",
        "a query without //",
    ],
)
def test_a_url_with_credentials_in_any_shape_is_never_repeated(setting: dict[str, object]) -> None:
    """A URL in a list, a tuple, bytes, a cache's whole entry pasted where its alias belongs, a key,
    or the first 40 characters of an overlong client name was repeated whole, password included."""
    found = messages(setting)
    assert found, setting
    assert not [message for message in found if "hunter2" in message], found


def test_a_urlconf_looking_a_client_up_as_it_is_imported_shows_the_list_in_its_traceback(tmp_path: Path) -> None:
    """What README says of this case: Django's URL check imports the URLconf, whose views look a
    client up (``BILLING = clients["billing"]``); with invalid settings that look-up raises, and
    Django prints it as a traceback, the whole list of problems in its last line. Exit 1."""
    (tmp_path / "looking_views.py").write_text(
        "from django_aio_request import clients\nBILLING = clients['billing']\nurlpatterns = []\n"
    )
    settings = """
from settings.test import *
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
ROOT_URLCONF = "looking_views"
AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/", "TIMEOUT": -1}}}
"""
    done = manage(tmp_path, "check", settings=settings)
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "AIO_REQUEST has 1 problem:" in done.stderr
    assert "['CLIENTS']['billing']['TIMEOUT'] must be a number of seconds > 0, not -1" in done.stderr
    # Its last line says why check cannot list them: it told the reader to run `manage.py check`,
    # the command that had just failed (a review).
    tagged = manage(tmp_path, "check", "--tag", "django_aio_request", settings=settings)  # as that line says
    assert (tagged.returncode, "Traceback" in tagged.stderr) == (1, False)
    assert "['CLIENTS']['billing']['TIMEOUT'] must be a number of seconds > 0, not -1" in tagged.stderr
    assert done.stderr.rstrip().splitlines()[-1] == (
        "(raised while Django's system checks ran, by a client looked up as a module they import was imported,"
        " a URLconf's views say: `manage.py check --tag django_aio_request` lists them)"
    )


def test_a_models_module_looking_a_client_up_stops_every_command_and_says_why(tmp_path: Path) -> None:
    """A review: an app's ``models.py`` that looks a client up (``BILLING = clients["billing"]``) raises
    while Django loads the apps, before any check runs, and the message sent the reader to
    ``manage.py check``, which had just failed with it. It now says why no command can start."""
    app = tmp_path / "looking_models_app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text("from django_aio_request import clients\n\nBILLING = clients['billing']\n")
    settings = """
from settings.test import *
INSTALLED_APPS = [*INSTALLED_APPS, "looking_models_app"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/", "TIMEOUT": -1}}}
"""
    for command in ("check", "migrate"):
        done = manage(tmp_path, command, settings=settings)
        assert done.returncode == 1, done.stderr
        assert "AIO_REQUEST has 1 problem:" in done.stderr
        assert "['CLIENTS']['billing']['TIMEOUT'] must be a number of seconds > 0, not -1" in done.stderr
        assert "raised while Django loads its apps" in done.stderr
        assert "reports the same" not in done.stderr


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        ("assert False", "AssertionError"),
        ("import os; os.environ['AIO_UNSET_' + 'X' * 8]", "KeyError: 'AIO_UNSET_XXXXXXXX'"),
    ],
)
def test_what_a_module_raised_as_it_was_imported_is_named_with_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: str, said: str
) -> None:
    """The E008 gave the error's text alone: nothing after "cannot be imported: " for a bare assert,
    only the key for a KeyError (a review)."""
    module = f"raises_{len(said)}_on_import"
    (tmp_path / f"{module}.py").write_text(raised + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = messages({"CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": f"{module}.f"}}})
    assert found == [
        f"django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['REQUEST_ENRICHER'] cannot be imported: {said}"
        " | give the dotted path of a function taking and returning a Request"
    ]


def test_a_module_that_looks_a_client_up_as_it_is_imported_is_no_e008_when_another_key_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its look-up read the settings, which another key's problem refused: that InvalidSettings was
    reported as the module failing to import (a false E008), and the problem counted twice."""
    (tmp_path / "looks_up_on_import.py").write_text(
        "from django_aio_request import clients\nAUTH = clients['auth']\n\ndef enrich(request):\n    return request\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = messages(
        {
            "CLIENTS": {
                "auth": GOOD,
                "billing": {**GOOD, "REQUEST_ENRICHER": "looks_up_on_import.enrich"},
                "other": {**GOOD, "TIMEOUT": -1},
            }
        }
    )
    assert [m.split(" ", 2)[:2] for m in found] == [
        ["django_aio_request.E003", "AIO_REQUEST['CLIENTS']['other']['TIMEOUT']"]
    ], found


class SecretsStore(Mapping[str, object]):
    """A mapping that fetches each value as it is read, from a store that is down for one key."""

    def __init__(self, values: Mapping[str, object], unreachable: str) -> None:
        self._values, self._unreachable = values, unreachable

    def __getitem__(self, key: str) -> object:
        if key == self._unreachable:
            raise RuntimeError("secrets store unreachable")
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_a_mapping_whose_look_up_of_a_key_raises_is_an_e099_at_that_key_and_hides_nothing() -> None:
    """The copy made before reading (lazy strings made text) read every entry first: the error made the
    whole setting one E099 naming no key, with the E003 and E004 of other keys hidden (a review)."""
    billing = SecretsStore({**GOOD, "TIMEOUT": 1}, unreachable="TIMEOUT")
    found = messages({"TIMEOUT": -1, "CLIENTS": {"billing": billing, "other": {"ENDPOINT": "nope"}}})
    assert sorted(m.split(" ", 2)[0] + " " + m.split(" ", 2)[1] for m in found) == [
        "django_aio_request.E003 AIO_REQUEST['TIMEOUT']",
        "django_aio_request.E004 AIO_REQUEST['CLIENTS']['other']['ENDPOINT']",
        "django_aio_request.E099 AIO_REQUEST['CLIENTS']['billing']['TIMEOUT']",
    ], found
    assert any("could not be read: RuntimeError: secrets store unreachable" in m for m in found), found


def test_a_mapping_whose_keys_cannot_be_listed_is_an_e099_where_it_is() -> None:
    class Unlistable(SecretsStore):
        def __iter__(self) -> Iterator[str]:
            raise ConnectionError("secrets store unreachable")

    found = messages({"TIMEOUT": -1, "CLIENTS": {"billing": Unlistable({}, unreachable="")}})
    assert sorted(m.split(" ", 2)[0] + " " + m.split(" ", 2)[1] for m in found) == [
        "django_aio_request.E003 AIO_REQUEST['TIMEOUT']",
        "django_aio_request.E099 AIO_REQUEST['CLIENTS']['billing']",
    ], found


def test_a_module_that_raises_invalid_settings_of_its_own_as_it_is_imported_is_e008(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken for a module refused by the setting's other problems (which were then reported), it
    passed the check with nothing else wrong, and every look-up of the client raised (a review)."""
    (tmp_path / "raises_its_own_invalid_settings.py").write_text(
        "from django_aio_request import InvalidSettings\nraise InvalidSettings('RULES_URL is not set')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = messages({"CLIENTS": {"billing": {**GOOD, "REQUEST_ENRICHER": "raises_its_own_invalid_settings.f"}}})
    assert found == [
        "django_aio_request.E008 AIO_REQUEST['CLIENTS']['billing']['REQUEST_ENRICHER'] cannot be imported:"
        " InvalidSettings: RULES_URL is not set | give the dotted path of a function taking and returning a Request"
    ]


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ({"CLIENTS": {"billing": SecretsStore(GOOD, unreachable="ENDPOINT")}}, "['CLIENTS']['billing']['ENDPOINT']"),
        ({"KNOWN_SERVICES": "unlisted"}, "['KNOWN_SERVICES']"),
        ({"CLIENTS": {"billing": {"ENDPOINT": "unlisted"}}}, "['CLIENTS']['billing']['ENDPOINT']"),
    ],
    ids=["a required key whose look-up raises", "a list of names", "an endpoint"],
)
def test_what_could_not_be_read_is_one_e099_and_nothing_else(setting: dict[str, Any], where: str) -> None:
    """A key whose look-up raised was also "required" (E004), and a mapping whose keys could not be
    listed, where a list or a URL goes, was also "not Unlisted" (E002, E004): a review."""

    class Unlistable(SecretsStore):
        def __iter__(self) -> Iterator[str]:
            raise ConnectionError("secrets store unreachable")

    def unlisted(value: Any) -> Any:
        if value == "unlisted":
            return Unlistable({}, unreachable="")
        if isinstance(value, dict):
            return {key: unlisted(item) for key, item in value.items()}
        return value

    found = messages(unlisted(setting))
    assert [m.split(" ", 2)[:2] for m in found] == [["django_aio_request.E099", f"AIO_REQUEST{where}"]], found

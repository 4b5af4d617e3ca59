"""conf/current.py: the validated AIO_REQUEST is read once, again after it changes, and refused whole when invalid."""

import time
import types
from typing import Any

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request.conf import current as current_module
from django_aio_request.conf.current import InvalidSettings, current


def test_read_once_and_read_again_when_the_setting_changes(settings: SettingsWrapper) -> None:
    settings.AIO_REQUEST = {"SERVICE_NAME": "one"}
    first = current.settings
    assert current.settings is first  # cached: the middleware reads it on every request
    settings.AIO_REQUEST = {"SERVICE_NAME": "two"}
    assert current.settings.service_name == "two"


def test_a_read_the_setting_changed_under_is_not_kept(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading takes no lock (a thread reading the settings imported a module another thread was
    importing, which looked a client up: both hung, tests/app/test_named_clients.py), so a change
    can come in the middle of a read: that read's value is not kept, the next read gets the new one."""
    settings.AIO_REQUEST = {"SERVICE_NAME": "one"}
    read = current_module._read

    def read_while_the_setting_changes(value: object) -> object:
        settings.AIO_REQUEST = {"SERVICE_NAME": "two"}  # setting_changed: current.reset()
        return read(value)

    monkeypatch.setattr(current_module, "_read", read_while_the_setting_changes)
    assert current.settings.service_name == "one"  # what this read was asked for
    monkeypatch.setattr(current_module, "_read", read)
    assert current.settings.service_name == "two"


def test_a_change_between_a_read_s_last_look_at_the_generation_and_its_store_is_not_lost(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read looked at the generation, then stored what it read: a reset() in between (another
    thread's override_settings) dropped nothing yet stored, and the old settings stayed for good (a
    review widened the gap with a sleep). Here the change comes as the read asks whether its value is
    provisional, the step between the two."""
    settings.AIO_REQUEST = {"SERVICE_NAME": "one"}
    read = current_module._read

    class Racing:
        def __init__(self, parsed: object) -> None:
            self.parsed = parsed

        def __getattr__(self, name: str) -> object:
            return getattr(self.parsed, name)

        @property
        def provisional(self) -> bool:
            settings.AIO_REQUEST = {"SERVICE_NAME": "two"}  # setting_changed: current.reset()
            return False

    def read_racing(value: object) -> tuple[Racing, list[Any]]:
        parsed, problems = read(value)
        return Racing(parsed), problems

    monkeypatch.setattr(current_module, "_read", read_racing)
    current.settings  # noqa: B018 - the read the change overtakes
    monkeypatch.setattr(current_module, "_read", read)
    assert current.settings.service_name == "two"


def test_invalid_settings_raise_one_error_naming_every_problem(settings: SettingsWrapper) -> None:
    settings.AIO_REQUEST = {"TIMEOUT": -1, "CLIENTS": {"billing": {"ENDPOINT": "ftp://x/"}}}
    with pytest.raises(InvalidSettings) as error:
        current.settings  # noqa: B018
    message = str(error.value)
    assert "AIO_REQUEST['TIMEOUT']" in message
    assert "AIO_REQUEST['CLIENTS']['billing']['ENDPOINT']" in message
    assert "manage.py check" in message


@pytest.mark.parametrize("kind", [dict, types.MappingProxyType])
def test_an_error_elsewhere_leaves_the_database_bound_readable_in_any_mapping(
    settings: SettingsWrapper, kind: type
) -> None:
    """A client's mistake must not fail every query (docs/database.md): DATABASE_STATEMENT_TIMEOUT is
    then read on its own, from any mapping the reader accepts, not only a dict."""
    settings.AIO_REQUEST = kind(
        {"DATABASE_STATEMENT_TIMEOUT": True, "CLIENTS": {"billing": {"ENDPOINT": "billing:8080"}}}
    )
    with pytest.raises(InvalidSettings, match="ENDPOINT"):
        current.settings  # noqa: B018
    assert current.database_statement_timeout is True
    settings.AIO_REQUEST = kind({"DATABASE_STATEMENT_TIMEOUT": "yes", "CLIENTS": {"billing": {"ENDPOINT": "x"}}})
    with pytest.raises(InvalidSettings, match="DATABASE_STATEMENT_TIMEOUT"):
        current.database_statement_timeout  # noqa: B018
    settings.AIO_REQUEST = [("DATABASE_STATEMENT_TIMEOUT", True)]  # no mapping: refused whole
    with pytest.raises(InvalidSettings):
        current.database_statement_timeout  # noqa: B018


def test_a_reader_that_fails_unexpectedly_raises_invalid_settings_naming_it(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the reader did not foresee raised its own ValueError or AttributeError at the first use of
    a client, not the InvalidSettings docs/checks.md promises; it is now one, with the id (E099) that
    check reports it under."""
    from django_aio_request.conf import current as current_module

    def broken(value: object) -> object:
        raise AttributeError("a case the reader did not foresee")

    monkeypatch.setattr(current_module, "read_settings", broken)
    settings.AIO_REQUEST = {"SERVICE_NAME": "unforeseen"}
    with pytest.raises(InvalidSettings) as error:
        current.settings  # noqa: B018
    assert "AttributeError: a case the reader did not foresee [django_aio_request.E099]" in str(error.value)
    assert isinstance(error.value.__cause__, AttributeError)
    with pytest.raises(InvalidSettings, match="E099"):
        current.database_statement_timeout  # noqa: B018


def test_settings_that_broke_the_reader_raise_invalid_settings_at_the_first_use_of_a_client(
    settings: SettingsWrapper,
) -> None:
    """Both ways the reader raised (a number too long to print, a CACHES entry that is a list) reached
    the first use of a client as ValueError or AttributeError; they are problems like any other."""
    from django_aio_request import clients

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, "b": ["redis://x"]}
    settings.AIO_REQUEST = {
        "CIRCUIT_BREAKER_STATE": "b",
        "CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/", "TIMEOUT": 10**5000}},
    }
    with pytest.raises(InvalidSettings) as error:
        clients["billing"]
    assert "an integer of 5001 digits [django_aio_request.E003]" in str(error.value)
    assert "[django_aio_request.E006]" in str(error.value)


def test_a_child_forked_while_another_thread_stored_a_read_reads_the_settings() -> None:
    """The lock that makes a read's store one step with reset()'s drop, held by another thread at a
    fork, would stay held in the child: its first read after a settings change would hang for good."""
    import os
    import threading

    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with current._storing:
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(5)
        pid = os.fork()
        if pid == 0:  # the child: its reset() and read take the lock
            code = 1
            try:
                current.reset()
                code = 0 if current.settings is not None else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done[0] == pid, "the child hung on the lock its parent's thread held"
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        release.set()
        thread.join(5)

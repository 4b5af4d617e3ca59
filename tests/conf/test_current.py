"""conf/current.py: the validated AIO_REQUEST is read once, again after it changes, and refused whole when invalid."""

import types

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

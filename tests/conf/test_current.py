"""conf/current.py: the validated AIO_REQUEST is read once, again after it changes, and refused whole when invalid."""

import types

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request.conf.current import InvalidSettings, current


def test_read_once_and_read_again_when_the_setting_changes(settings: SettingsWrapper) -> None:
    settings.AIO_REQUEST = {"SERVICE_NAME": "one"}
    first = current.settings
    assert current.settings is first  # cached: the middleware reads it on every request
    settings.AIO_REQUEST = {"SERVICE_NAME": "two"}
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

"""conf/current.py: the validated AIO_REQUEST is read once, again after it changes, and refused whole when invalid."""

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

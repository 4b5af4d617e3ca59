"""Upgrading a project: migration 0003 renames the admin's model to BreakerStatus, and whoever could
see "Circuit breakers" before still can (the view permission follows the rename)."""

from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command

from django_aio_request.models import BreakerStatus
from tests.conf.test_settings_checks import manage


@pytest.mark.django_db(transaction=True)
def test_the_view_permission_follows_the_model_rename() -> None:
    call_command("migrate", "django_aio_request", "0002", verbosity=0)
    try:
        # As an install made before 0003 has it: only the old model's content type and permission
        # (migrating back runs post_migrate, which adds the current model's; an old install has none).
        ContentType.objects.filter(app_label="django_aio_request", model="breakerstatus").delete()
        old = Permission.objects.get(content_type__app_label="django_aio_request", codename="view_circuitbreaker")
        operators = Group.objects.create(name="operators")
        operators.permissions.add(old)

        call_command("migrate", "django_aio_request", verbosity=0)

        (permission,) = Group.objects.get(name="operators").permissions.all()
        assert permission.codename == "view_breakerstatus"
        assert permission.content_type == ContentType.objects.get_for_model(BreakerStatus)
        assert not Permission.objects.filter(codename="view_circuitbreaker").exists()
    finally:
        call_command("migrate", "django_aio_request", verbosity=0)


# A project as small as the README's setup allows: no django.contrib.admin, no DEFAULT_AUTO_FIELD.
SMALL_PROJECT = """
SECRET_KEY = "not-a-secret"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_aio_request"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": %r}}
AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/"}}}
"""


def test_a_project_without_admin_or_default_auto_field_checks_migrates_and_lists_breakers(tmp_path: Path) -> None:
    """Before: check gave models.W042 for the app's three models, makemigrations found an "Alter
    field id" to make, and ``manage.py circuit_breakers`` ended in a traceback (LookupError: No
    installed app with label 'admin')."""
    settings = SMALL_PROJECT % str(tmp_path / "db.sqlite3")
    check = manage(tmp_path, "check", settings=settings)
    assert check.returncode == 0, check.stderr
    assert "W042" not in check.stderr + check.stdout
    pending = manage(tmp_path, "makemigrations", "--check", "--dry-run", "django_aio_request", settings=settings)
    assert pending.returncode == 0, pending.stdout + pending.stderr
    assert manage(tmp_path, "migrate", settings=settings).returncode == 0
    listed = manage(tmp_path, "circuit_breakers", settings=settings)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr

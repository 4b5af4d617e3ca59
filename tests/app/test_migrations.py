"""Upgrading a project: migration 0003 renames the admin's model to BreakerStatus, and whoever could
see "Circuit breakers" before still can (the view permission follows the rename); migration 0005
keeps who changed each override as text, and a database migrated by the release, whose 0001 made
a foreign key to the user model, migrates on with the usernames carried over."""

import datetime
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings

from django_aio_request.models import BreakerOverride, BreakerReport, BreakerStatus
from tests.conf.test_settings_checks import manage

APP = "django_aio_request"


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


# The app's migrations as released: 0001 made BreakerOverride.changed_by a foreign key to the user model.
RELEASED = {APP: "tests.support.released_migrations"}
LAST_RELEASED = (APP, "0004_breaker_heartbeat_and_window")
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
LIVE = datetime.datetime(2999, 1, 1, tzinfo=datetime.UTC)


def migrate_on_from_the_release(alias: str) -> None:
    """A database migrated by the release, with overrides set by a user, by one since deleted (the
    foreign key set to null) and by nobody logged in; then ``manage.py migrate`` with this version."""
    connection = connections[alias]
    MigrationExecutor(connection).migrate([(APP, None)])  # as before the app was installed
    try:
        with override_settings(MIGRATION_MODULES=RELEASED):
            released = MigrationExecutor(connection).migrate([LAST_RELEASED]).apps
        operator = User.objects.db_manager(alias).create_user("operator")
        override = released.get_model(APP, "BreakerOverride")
        assert override._meta.get_field("changed_by").is_relation  # the release's schema
        rows = override.objects.using(alias)
        rows.create(client="billing", endpoint="http://billing/", mode="force_open", changed_at=NOW,
                    changed_by_id=operator.pk)  # fmt: skip
        rows.create(client="orders", endpoint="http://orders/", mode="force_closed", changed_at=NOW)
        BreakerReport.objects.using(alias).create(
            client="billing", endpoint="http://billing/", host="web-1", pid=1, reported_at=NOW, expires_at=LIVE
        )

        call_command("migrate", APP, database=alias, verbosity=0)  # checks the history is consistent

        overrides = BreakerOverride.objects.using(alias).order_by("client")
        assert [(o.client, o.mode, o.changed_by) for o in overrides] == [
            ("billing", "force_open", "operator"),
            ("orders", "force_closed", ""),
        ]
        with connection.cursor() as cursor:
            table = BreakerOverride._meta.db_table
            columns = [column.name for column in connection.introspection.get_table_description(cursor, table)]
            constraints = connection.introspection.get_constraints(cursor, table)
        assert "changed_by_id" not in columns
        assert not [name for name, info in constraints.items() if info["foreign_key"]]
        assert BreakerStatus.objects.using(alias).get().state == "forced_open"  # the view is back
        User.objects.db_manager(alias).filter(pk=operator.pk).delete()  # nothing refers to it any more
        assert BreakerOverride.objects.using(alias).get(client="billing").changed_by == "operator"
    finally:
        call_command("migrate", APP, database=alias, verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_a_database_migrated_by_the_release_keeps_who_changed_each_override_sqlite() -> None:
    """Before: no such migration; the release's foreign key made a project without auth fail to check
    and migrate (tests/app/test_without_auth.py)."""
    migrate_on_from_the_release("default")


@pytest.mark.django_db(transaction=True, databases=["postgres"])
def test_a_database_migrated_by_the_release_keeps_who_changed_each_override_postgresql() -> None:
    migrate_on_from_the_release("postgres")

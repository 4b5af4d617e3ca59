"""Who changed an override is kept as text, the user's ``get_username()`` at the time, instead of a
foreign key to ``settings.AUTH_USER_MODEL``: the app installs, checks and migrates in a project
without ``django.contrib.auth`` (0001 no longer makes the foreign key nor depends on auth).

A database migrated with 0001 as it was released still has the column ``changed_by_id`` (and its
foreign key constraint and index) that no migration state knows about any more: this migration
copies the username of each override's user into ``changed_by`` and drops the column. Elsewhere it
only adds ``changed_by``. Going back to 0004 drops ``changed_by`` and does not bring the foreign key
back (0001 no longer has it).

The view is dropped before the table changes (SQLite rebuilds the table) and made again after, as
0004 made it.
"""

import importlib
from typing import Any

from django.apps import apps as global_apps
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist
from django.db import migrations, models

_view = importlib.import_module("django_aio_request.migrations.0004_breaker_heartbeat_and_window")
_drop = importlib.import_module("django_aio_request.migrations.0002_circuit_breaker_view").DROP_VIEW

TABLE = "django_aio_request_breakeroverride"
LEGACY_COLUMN = "changed_by_id"  # the foreign key 0001 made before it changed
LENGTH = 255


def _legacy_column(schema_editor: Any) -> bool:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        columns = connection.introspection.get_table_description(cursor, TABLE)
    return any(column.name == LEGACY_COLUMN for column in columns)


def _usernames(apps: Any, schema_editor: Any) -> dict[Any, str]:
    """{override id: its user's username} for the overrides whose user still exists; {} when the user
    model cannot be read (its app is no longer installed)."""
    try:
        # USERNAME_FIELD (what get_username() reads) is on the class: historical models lack it.
        user_class = global_apps.get_model(settings.AUTH_USER_MODEL)
    except (LookupError, ValueError):
        return {}
    try:
        user_model = apps.get_model(settings.AUTH_USER_MODEL)  # its table and columns as migrated
    except LookupError:
        user_model = user_class
    try:
        username = user_model._meta.get_field(getattr(user_class, "USERNAME_FIELD", "username")).column
    except FieldDoesNotExist:
        return {}
    users = user_model._meta.db_table
    connection = schema_editor.connection
    if users not in connection.introspection.table_names():
        return {}
    qn = schema_editor.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT o.id, u.{qn(username)} FROM {qn(TABLE)} o "
            f"JOIN {qn(users)} u ON u.{qn(user_model._meta.pk.column)} = o.{qn(LEGACY_COLUMN)}"
        )
        return {pk: str(name) for pk, name in cursor.fetchall()}


def _drop_legacy_column(model: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "sqlite":
        # SQLite cannot drop a column with an index and a foreign key: rebuild the table from the
        # model, which has no such column (what Django's own RemoveField does on SQLite).
        schema_editor._remake_table(model)
        return
    connection = schema_editor.connection
    qn = schema_editor.quote_name
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    for name, info in constraints.items():  # some backends (MySQL) drop a column only without them
        if info["foreign_key"] and info["columns"] == [LEGACY_COLUMN]:
            schema_editor.execute(schema_editor.sql_delete_fk % {"table": qn(TABLE), "name": qn(name)})
    schema_editor.execute(schema_editor.sql_delete_column % {"table": qn(TABLE), "column": qn(LEGACY_COLUMN)})


def carry_over_changed_by(apps: Any, schema_editor: Any) -> None:
    if not _legacy_column(schema_editor):
        return  # made by 0001 as it is now: no foreign key to carry over
    names = _usernames(apps, schema_editor)  # read first: the column goes next
    override = apps.get_model("django_aio_request", "BreakerOverride")
    _drop_legacy_column(override, schema_editor)
    rows = override.objects.using(schema_editor.connection.alias)
    for pk, name in names.items():
        rows.filter(pk=pk).update(changed_by=name[:LENGTH])


class Migration(migrations.Migration):
    dependencies = [
        ("django_aio_request", "0004_breaker_heartbeat_and_window"),
    ]

    operations = [
        migrations.RunSQL(_drop, _view.CREATE_VIEW),
        # Nullable first: SQLite adds it in place (with a default it rebuilds the table, and would
        # lose the legacy column before its usernames are read).
        migrations.AddField(
            model_name="breakeroverride",
            name="changed_by",
            field=models.CharField(max_length=LENGTH, null=True),
        ),
        migrations.RunPython(carry_over_changed_by, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="breakeroverride",
            name="changed_by",
            field=models.CharField(blank=True, default="", max_length=LENGTH),
        ),
        migrations.RunSQL(_view.CREATE_VIEW, _drop),
    ]

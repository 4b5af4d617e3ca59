"""``CircuitBreaker`` (the unmanaged model behind admin's "Circuit breakers") becomes ``BreakerStatus``,
so that it no longer shares its name with the breaker class ``django_aio_request.CircuitBreaker``.

The database view keeps its name (``db_table``). Django renames the content type; this migration
renames the model's "view" permission too, so groups and users that could see the page still can.
"""

from typing import Any

from django.db import migrations

OLD, NEW = "view_circuitbreaker", "view_breakerstatus"


def rename_permission(apps: Any, schema_editor: Any, old: str = OLD, new: str = NEW) -> None:
    # No dependency on auth: a project may install this app without django.contrib.auth, or migrate
    # it before auth's tables exist (then there is no permission to rename yet).
    tables = schema_editor.connection.introspection.table_names()
    if "auth" not in apps.app_configs or "auth_permission" not in tables or "django_content_type" not in tables:
        return
    permission = apps.get_model("auth", "Permission")
    content_type = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    types = content_type.objects.using(db).filter(
        app_label="django_aio_request", model__in=("breakerstatus", "circuitbreaker")
    )
    permissions = permission.objects.using(db).filter(content_type__in=types)
    if not permissions.filter(codename=new).exists():
        permissions.filter(codename=old).update(codename=new, name="Can view circuit breaker")


def restore_permission(apps: Any, schema_editor: Any) -> None:
    rename_permission(apps, schema_editor, old=NEW, new=OLD)


class Migration(migrations.Migration):
    dependencies = [("django_aio_request", "0002_circuit_breaker_view")]

    operations = [
        migrations.RenameModel("CircuitBreaker", "BreakerStatus"),
        migrations.RunPython(rename_permission, restore_permission),
    ]

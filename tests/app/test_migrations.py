"""Upgrading a project: migration 0003 renames the admin's model to BreakerStatus, and whoever could
see "Circuit breakers" before still can (the view permission follows the rename)."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command

from django_aio_request.models import BreakerStatus


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

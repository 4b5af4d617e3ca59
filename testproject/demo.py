"""``make demo``: migrate, create the demo admin login, and start the demo server on loopback."""

import os

import django
from django.core.management import call_command


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.demo")
    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model

    call_command("migrate", verbosity=0)
    call_command("check", "--tag", "django_aio_request")
    user_model = get_user_model()
    if not user_model.objects.filter(username="demo").exists():
        user_model.objects.create_superuser("demo", "demo@example.invalid", "demo")
    port = getattr(settings, "DEMO_PORT", 8000)
    print(f"\nDemo running. Open http://127.0.0.1:{port}/  (admin: http://127.0.0.1:{port}/admin/, login demo / demo)")
    print("Stop with Ctrl-C.\n", flush=True)
    call_command("runserver", f"127.0.0.1:{port}", "--noreload")


if __name__ == "__main__":
    main()

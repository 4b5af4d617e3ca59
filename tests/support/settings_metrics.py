"""settings.test serving tests/urls_metrics.py (with /metrics), for the gunicorn test's workers."""

from settings.test import *  # noqa: F403
from settings.test import INSTALLED_APPS

ROOT_URLCONF = "tests.support.urls_metrics"
INSTALLED_APPS = [*INSTALLED_APPS, "django_prometheus"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

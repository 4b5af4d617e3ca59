"""Unchanged since the release: the app's own."""

import importlib

Migration = importlib.import_module("django_aio_request.migrations.0004_breaker_heartbeat_and_window").Migration

"""Unchanged since the release: the app's own."""

import importlib

Migration = importlib.import_module("django_aio_request.migrations.0003_rename_circuitbreaker_breakerstatus").Migration

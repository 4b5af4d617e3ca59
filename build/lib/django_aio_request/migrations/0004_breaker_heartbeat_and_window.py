"""Reports become heartbeats and count a window an operator can read; the view shows what is true now.

- ``BreakerReport.expires_at``: the publisher sets it a few intervals ahead (on the database's clock)
  every round; the view folds only reports not yet expired, so a process that stopped publishing
  stops counting within seconds (its rows are deleted later).
- ``failures``/``successes`` count the calls of the last ``COUNT_WINDOW`` (60 s), ``rejected`` the
  calls answered with the fallback, ``window_seconds`` how many seconds they cover.
- ``blocked_until``: until when an open circuit blocks calls (after that, the next call probes).
- The view's ``state`` applies the override (forced open/closed at once, before every process has
  obeyed); ``reported_state`` is the worst state a live process reports. Outcome counts are each
  process's own calls: they add up, shared store or not.

The view is dropped before the columns are added (SQLite rebuilds the table) and made again after,
in SQL that SQLite and PostgreSQL both accept (``CURRENT_TIMESTAMP``: UTC text on SQLite, comparable
with Django's stored datetimes; a timestamp with time zone on PostgreSQL).
"""

import importlib

import django.utils.timezone
from django.db import migrations, models

# The view as 0002 made it: what going back to 0003 restores.
_before = importlib.import_module("django_aio_request.migrations.0002_circuit_breaker_view")

_COUNT = "SUM(CASE WHEN r.state = '{0}' THEN 1 ELSE 0 END)"
_REPORTED = f"""CASE
        WHEN {_COUNT.format("forced_open")} > 0 THEN 'forced_open'
        WHEN {_COUNT.format("open")} > 0 THEN 'open'
        WHEN {_COUNT.format("half_open")} > 0 THEN 'half_open'
        WHEN {_COUNT.format("forced_closed")} > 0 THEN 'forced_closed'
        ELSE 'closed'
    END"""
CREATE_VIEW = f"""
CREATE VIEW django_aio_request_circuitbreaker AS
SELECT
    r.client || ' ' || r.endpoint AS id,
    r.client AS client,
    r.endpoint AS endpoint,
    CASE
        WHEN MAX(o.mode) = 'force_open' THEN 'forced_open'
        WHEN MAX(o.mode) = 'force_closed' THEN 'forced_closed'
        ELSE {_REPORTED}
    END AS state,
    {_REPORTED} AS reported_state,
    COUNT(*) AS processes,
    {_COUNT.format("closed")} AS closed_count,
    {_COUNT.format("open")} AS open_count,
    {_COUNT.format("half_open")} AS half_open_count,
    {_COUNT.format("forced_open")} AS forced_open_count,
    {_COUNT.format("forced_closed")} AS forced_closed_count,
    SUM(r.failures) AS failures,
    SUM(r.successes) AS successes,
    CASE WHEN SUM(r.failures) + SUM(r.successes) = 0 THEN CAST(0 AS DOUBLE PRECISION)
        ELSE CAST(SUM(r.failures) AS DOUBLE PRECISION) / (SUM(r.failures) + SUM(r.successes))
    END AS failure_ratio,
    SUM(r.rejected) AS rejected,
    MAX(r.changed_at) AS changed_at,
    MIN(CASE WHEN r.state = 'open' THEN r.blocked_until END) AS blocked_until,
    MAX(r.reported_at) AS reported_at,
    MAX(o.mode) AS override
FROM django_aio_request_breakerreport r
LEFT JOIN django_aio_request_breakeroverride o ON o.client = r.client AND o.endpoint = r.endpoint
WHERE r.expires_at > CURRENT_TIMESTAMP
GROUP BY r.client, r.endpoint
"""


class Migration(migrations.Migration):
    dependencies = [
        ("django_aio_request", "0003_rename_circuitbreaker_breakerstatus"),
    ]

    operations = [
        migrations.RunSQL(_before.DROP_VIEW, _before.CREATE_VIEW),
        migrations.AddField(
            model_name="breakerreport",
            name="blocked_until",
            field=models.DateTimeField(
                blank=True,
                help_text="open: when the break ends and the next call probes; empty: not blocked",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="breakerreport",
            name="expires_at",
            field=models.DateTimeField(
                db_index=True,
                default=django.utils.timezone.now,
                help_text="the report counts until then (heartbeat)",
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="breakerreport",
            name="rejected",
            field=models.PositiveIntegerField(default=0, help_text="calls answered with the fallback (no request)"),
        ),
        migrations.AddField(
            model_name="breakerreport",
            name="window_seconds",
            field=models.FloatField(default=60.0),
        ),
        migrations.RunSQL(CREATE_VIEW, _before.DROP_VIEW),
    ]

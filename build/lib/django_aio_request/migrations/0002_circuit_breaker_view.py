"""The database view behind the unmanaged ``CircuitBreaker`` model: the reports of every process
folded into one row per client and endpoint, in SQL that SQLite and PostgreSQL both accept
(``CAST(... AS DOUBLE PRECISION)`` keeps the ratio a float on PostgreSQL instead of a numeric).
Counts of processes sharing a cache (``store`` is the alias) are the same in each: counted once."""

from django.db import migrations

_COUNT = "SUM(CASE WHEN r.state = '{0}' THEN 1 ELSE 0 END)"
# Local counts add up; counts in a shared cache are the same in every process: taken once.
_TOTAL = (
    "(SUM(CASE WHEN r.store = 'local' THEN r.{0} ELSE 0 END) + MAX(CASE WHEN r.store <> 'local' THEN r.{0} ELSE 0 END))"
)
CREATE_VIEW = f"""
CREATE VIEW django_aio_request_circuitbreaker AS
SELECT
    r.client || ' ' || r.endpoint AS id,
    r.client AS client,
    r.endpoint AS endpoint,
    CASE
        WHEN {_COUNT.format("forced_open")} > 0 THEN 'forced_open'
        WHEN {_COUNT.format("open")} > 0 THEN 'open'
        WHEN {_COUNT.format("half_open")} > 0 THEN 'half_open'
        WHEN {_COUNT.format("forced_closed")} > 0 THEN 'forced_closed'
        ELSE 'closed'
    END AS state,
    COUNT(*) AS processes,
    {_COUNT.format("closed")} AS closed_count,
    {_COUNT.format("open")} AS open_count,
    {_COUNT.format("half_open")} AS half_open_count,
    {_COUNT.format("forced_open")} AS forced_open_count,
    {_COUNT.format("forced_closed")} AS forced_closed_count,
    {_TOTAL.format("failures")} AS failures,
    {_TOTAL.format("successes")} AS successes,
    CASE WHEN {_TOTAL.format("failures")} + {_TOTAL.format("successes")} = 0 THEN CAST(0 AS DOUBLE PRECISION)
        ELSE CAST({_TOTAL.format("failures")} AS DOUBLE PRECISION)
            / ({_TOTAL.format("failures")} + {_TOTAL.format("successes")})
    END AS failure_ratio,
    MAX(r.changed_at) AS changed_at,
    MAX(r.reported_at) AS reported_at,
    MAX(o.mode) AS override
FROM django_aio_request_breakerreport r
LEFT JOIN django_aio_request_breakeroverride o ON o.client = r.client AND o.endpoint = r.endpoint
GROUP BY r.client, r.endpoint
"""
DROP_VIEW = "DROP VIEW IF EXISTS django_aio_request_circuitbreaker"


class Migration(migrations.Migration):
    dependencies = [
        ("django_aio_request", "0001_circuit_breakers"),
    ]

    operations = [
        migrations.RunSQL(CREATE_VIEW, DROP_VIEW),
    ]

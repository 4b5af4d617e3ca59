"""A database backend wrapping Django's PostgreSQL one under a name without "postgresql" in it (as
django-postgres-extra's ``psqlextra.backend`` is), for the database checks' tests."""

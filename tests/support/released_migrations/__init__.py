"""django_aio_request's migrations 0001-0004 as released, before 0001 changed (see its 0005): 0001 made
``BreakerOverride.changed_by`` a foreign key to ``settings.AUTH_USER_MODEL`` and depended on the user
model's app. ``MIGRATION_MODULES = {"django_aio_request": "tests.support.released_migrations"}`` makes
a database as a project that installed that release has it (tests/app/test_migrations.py).
0001 is a copy of the released file; 0002-0004 did not change and are the app's own."""

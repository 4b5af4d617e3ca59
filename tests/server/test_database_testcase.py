"""A 408 of the database bound inside Django's ``TestCase``, which runs each test in a transaction
(as pytest-django's ``db`` fixture does): what docs/testing.md says about it."""

import pytest
from django.contrib.auth.models import Group
from django.db import InternalError, connections
from django.test import TestCase, override_settings

from django_aio_request.server import database as db

PG = "postgres"
TIMEOUT = {"X-Request-Timeout": "0.3"}


@override_settings(ROOT_URLCONF="tests.support.urls_db", AIO_REQUEST={"SERVICE_NAME": "tests", db.SETTING_KEY: True})
class DeadlineInATestCase(TestCase):
    databases = {PG}

    @classmethod
    def setUpClass(cls) -> None:
        db.install()  # what AppConfig.ready() does
        super().setUpClass()

    def test_a_cancelled_query_aborts_the_tests_transaction(self) -> None:
        """The view's query is cancelled in the test's transaction: the 408 is right, and every
        later query of the test fails until the test's transaction is rolled back."""
        response = self.client.get("/sleep-unguarded/", {"sleep": "3"}, headers=TIMEOUT)
        assert response.status_code == 408
        with pytest.raises(InternalError, match="current transaction is aborted"):
            Group.objects.using(PG).count()

    def test_a_view_in_its_own_atomic_block_leaves_the_tests_transaction_usable(self) -> None:
        """A savepoint around the view's queries (``ATOMIC_REQUESTS``, or ``transaction.atomic()``
        in the view) is rolled back to, and the test goes on querying."""
        pg = connections[PG]
        pg.settings_dict["ATOMIC_REQUESTS"] = True
        try:
            response = self.client.get("/sleep-unguarded/", {"sleep": "3"}, headers=TIMEOUT)
        finally:
            pg.settings_dict["ATOMIC_REQUESTS"] = False
        assert response.status_code == 408
        response = self.client.get("/atomic-sleep/", {"sleep": "3"}, headers=TIMEOUT)
        assert response.status_code == 408
        assert Group.objects.using(PG).count() == 0  # the view's write rolled back, the test goes on

"""A view that queries PostgreSQL under a deadline and answers 408 when the query runs out of it."""

from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse
from django.urls import path

from django_aio_request import Deadline, set_context
from django_aio_request.server.database import is_deadline_cancellation


def sleep(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of pg_sleep under a deadline of ``?timeout=`` seconds."""
    with set_context(deadline=Deadline.from_timeout(float(request.GET["timeout"]))):
        try:
            with connections["postgres"].cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", [float(request.GET["sleep"])])
        except DatabaseError as error:
            if is_deadline_cancellation(error):
                return HttpResponse("the query ran out of the deadline\n", status=408, content_type="text/plain")
            raise
    return HttpResponse("slept\n", content_type="text/plain")


def sleep_unguarded(request: HttpRequest) -> HttpResponse:
    """``?sleep=`` seconds of pg_sleep under the request's own deadline, with no error handling."""
    with connections["postgres"].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [float(request.GET["sleep"])])
    return HttpResponse("slept\n", content_type="text/plain")


urlpatterns = [path("sleep/", sleep), path("sleep-unguarded/", sleep_unguarded)]

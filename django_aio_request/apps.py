from django.apps import AppConfig


class DjangoAioRequestConfig(AppConfig):
    name = "django_aio_request"
    verbose_name = "aio-request"
    # What the migrations were made with, whatever the project's DEFAULT_AUTO_FIELD: without it, a
    # project that leaves the setting out (AutoField) got models.W042 and a pending "Alter field id".
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the app's parts. Reads no setting: an invalid ``AIO_REQUEST`` must not stop
        ``manage.py check`` from reporting it (the first use of a client or the middleware raises)."""
        from django_aio_request import checks  # noqa: F401 - registers the system checks
        from django_aio_request.breaker_publisher import client_built as watch_breaker
        from django_aio_request.breaker_publisher import remember_real_databases
        from django_aio_request.named_clients import clients
        from django_aio_request.server.async_stack import watch_first_request
        from django_aio_request.server.database import install
        from django_aio_request.signals import client_built

        remember_real_databases()  # before a test run names its databases: the publisher leaves these alone then
        client_built.connect(watch_breaker, dispatch_uid="django_aio_request.breaker_publisher")
        # Clients looked up before this (an app's models module, an earlier app's ready()) were built
        # with no receiver connected: never published to admin, never overridden (a review).
        for name, client in clients.built():
            watch_breaker(sender=None, name=name, client=client)
        watch_first_request()  # under ASGI, warns once if async views cannot be cancelled at the deadline
        install()  # bounds PostgreSQL queries by the deadline when AIO_REQUEST["DATABASE_STATEMENT_TIMEOUT"]

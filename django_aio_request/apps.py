from django.apps import AppConfig


class DjangoAioRequestConfig(AppConfig):
    name = "django_aio_request"
    verbose_name = "aio-request"

    def ready(self) -> None:
        from django_aio_request import checks  # noqa: F401 - registers the system checks
        from django_aio_request.server.database import install

        install()  # bounds PostgreSQL queries by the deadline when AIO_REQUEST["DATABASE_STATEMENT_TIMEOUT"]

from typing import Any

from django.conf import settings
from django.core import checks

from django_aio_request.conf.schema import SETTING, read_settings


@checks.register("django_aio_request")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report every problem in ``settings.AIO_REQUEST`` (``manage.py check --tag django_aio_request``)."""
    _, problems = read_settings(getattr(settings, SETTING, None))
    return [
        (checks.Warning if problem.warning else checks.Error)(
            f"{SETTING}{problem.path} {problem.message}",
            hint=problem.hint,
            obj=f"settings.{SETTING}",
            id="django_aio_request.W001" if problem.warning else "django_aio_request.E001",
        )
        for problem in problems
    ]

"""The path settings name: ``MIDDLEWARE = [..., "django_aio_request.middleware.AioRequestMiddleware", ...]``.

The middleware lives in ``server/middleware.py`` with the rest of the server side; this module keeps
the documented setting path working.
"""

from django_aio_request.server.middleware import AioRequestMiddleware

__all__ = ["AioRequestMiddleware"]

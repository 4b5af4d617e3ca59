"""settings.test with the circuit breakers sharing state through a Redis cache that has no socket
timeouts: ``manage.py check`` must warn (django_aio_request.W010)."""

from settings.test import *  # noqa: F403

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "breakers": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:6379/0"},
}
AIO_REQUEST = {"SERVICE_NAME": "tests", "CIRCUIT_BREAKER_STATE": "breakers", "CLIENTS": {}}

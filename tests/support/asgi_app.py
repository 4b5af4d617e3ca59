"""The ASGI application uvicorn serves in tests/server/test_asgi.py (settings from the environment)."""

from django.core.asgi import get_asgi_application

application = get_asgi_application()

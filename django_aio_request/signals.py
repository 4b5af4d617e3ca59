"""Signals of the Django layer.

``client_built`` is sent by the clients registry (``named_clients.py``) after it built
``clients[name]``, with ``name`` and ``client``, in the thread that built it and before other threads
are given the client: they wait for the receivers, at most ``named_clients.BUILD_WAIT`` (1 s), and
not at all on a thread that runs an event loop. A receiver may look up clients itself. Every
receiver runs, whatever one of them raises (Django logs it; the thread that built the client then
gets that exception, and the client stays built). The app's
``ready()`` connects the breaker publisher to it, so the registry does not need to know the
publisher (nor import the models).
"""

from django.dispatch import Signal

client_built = Signal()

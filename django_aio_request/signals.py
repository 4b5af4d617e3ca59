"""Signals of the Django layer.

``client_built`` is sent by the clients registry (``named_clients.py``) after it built
``clients[name]``, with ``name`` and ``client``, before any thread is given the client: other
threads looking it up wait for the receivers (a receiver may look up clients itself). The app's
``ready()`` connects the breaker publisher to it, so the registry does not need to know the
publisher (nor import the models).
"""

from django.dispatch import Signal

client_built = Signal()

"""Views that call the "billing" client, as application code would: for the testing helpers'
tests (tests/app/test_testing_helpers.py) and the ASGI tests under uvicorn (tests/server/test_asgi.py)."""

import time

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.urls import path

from django_aio_request import Response, clients, get, get_context


def _answer(response: Response, started: float) -> JsonResponse:
    context = get_context()
    return JsonResponse(
        {
            "status": response.status,
            "body": response.read().decode(errors="replace"),
            "elapsed": time.monotonic() - started,
            "timeout": None if context.deadline is None else context.deadline.timeout,
        }
    )


def invoice(request: HttpRequest, pk: int) -> JsonResponse:
    started = time.monotonic()
    client = clients[request.GET.get("client", "billing")]
    with client.request(get("invoices/{id}", path_parameters={"id": pk})) as response:
        return _answer(response, started)


async def ainvoice(request: HttpRequest, pk: int) -> JsonResponse:
    started = time.monotonic()
    client = clients[request.GET.get("client", "billing")]
    async with client.arequest(get("invoices/{id}", path_parameters={"id": pk})) as response:
        return _answer(response, started)


async def ainvoice_in_thread(request: HttpRequest, pk: int) -> JsonResponse:
    """The sync client's call handed to a thread from an async view (``sync_to_async``)."""
    return await sync_to_async(invoice)(request, pk)


async def aping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"pong": True})


urlpatterns = [
    path("aping/", aping),
    path("invoice/<int:pk>/", invoice),
    path("ainvoice/<int:pk>/", ainvoice),
    path("ainvoice-in-thread/<int:pk>/", ainvoice_in_thread),
]

"""The anchor caller of ``benchmarks/load.py``: the same hop as the demo's ``orders`` (``/demo/hop``
calls billing's ``/demo/hop``), written as an aiohttp service with an aio-request client, run under
gunicorn with aiohttp's worker:

    gunicorn -c python:benchmarks._load_gunicorn --worker-class aiohttp.GunicornWebWorker \\
        benchmarks._load_aio:make_app

``LOAD_BILLING_URL`` is billing's ``/demo/`` URL; ``LOAD_STRATEGY`` ``single`` (one attempt) or
``hedged`` (2 attempts, the second after aio-request's own percentile delays, with the percentile
``LOAD_HEDGE_PERCENTILE`` and the floor ``LOAD_HEDGE_MIN_DELAY``, as the project's hedged
client; they need the ``tdigest`` package). Timeout 2 s, the caller's deadline from ``X-Request-Timeout`` through
aio-request's server middleware, as for the project's caller. ``/demo/stats`` counts requests.
"""

import os
from collections.abc import AsyncIterator

import aio_request
import aiohttp
from aiohttp import web

FORWARDED = ("slow", "slow_delay", "run")
_CLIENT = web.AppKey("client", aio_request.Client)
_COUNT = web.AppKey("count", list)


def strategy() -> aio_request.RequestStrategy:
    if os.environ.get("LOAD_STRATEGY", "single") == "single":
        return aio_request.single_attempt_strategy()
    from aio_request.percentile_based_request_attempt_delays_provider import (
        PercentileBasedRequestAttemptDelaysProvider,
    )

    delays = PercentileBasedRequestAttemptDelaysProvider(
        percentile=float(os.environ.get("LOAD_HEDGE_PERCENTILE", "0.9")),
        min_delay_seconds=float(os.environ.get("LOAD_HEDGE_MIN_DELAY", "0.05")),
    )
    return aio_request.parallel_strategy(attempts_count=2, delays_provider=delays)


async def _client(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[_CLIENT] = aio_request.setup(
            transport=aio_request.AioHttpTransport(session),
            endpoint=os.environ["LOAD_BILLING_URL"],
            safe_method_strategy=strategy(),
            timeout=2.0,
        )
        yield


async def hop(request: web.Request) -> web.Response:
    request.app[_COUNT][0] += 1
    params = {key: request.query[key] for key in FORWARDED if request.query.get(key)}
    async with request.app[_CLIENT].request(aio_request.get("hop", query_parameters=params)) as response:
        status = response.status
        await response.read()
    return web.json_response({"service": "orders-aio-request", "downstream": {"status": status}})


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"service": "orders-aio-request", "pid": os.getpid(), "requests": request.app[_COUNT][0]})


async def make_app() -> web.Application:
    app = web.Application(middlewares=[aio_request.aiohttp_middleware_factory(timeout=20.0)])
    app[_COUNT] = [0]
    app.router.add_get("/demo/hop", hop)
    app.router.add_get("/demo/stats", stats)
    app.cleanup_ctx.append(_client)
    return app

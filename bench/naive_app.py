"""The naive baseline: what tutorials teach, with sse-starlette and one Redis Pub/Sub connection per client.

Run it with ``NAIVE_REDIS_URL=redis://… uvicorn bench.naive_app:app``. There is no replay: a client that reconnects
gets only what is published after its SUBSCRIBE. The pool is sized far beyond redis-py's default, which breaks at
about 100 clients (MaxConnectionsError), so that the design itself is what gets measured.
"""

from __future__ import annotations

import os

import redis.asyncio as redis
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

pool = redis.ConnectionPool.from_url(
    os.environ.get("NAIVE_REDIS_URL", "redis://127.0.0.1:6379"), max_connections=50_000
)
client = redis.Redis(connection_pool=pool)


async def events(request: Request) -> Response:
    channels = (
        [request.path_params["channel"]]
        if "channel" in request.path_params
        else request.query_params.getlist("channel")
    )
    multi = len(channels) > 1

    async def stream():
        pubsub = client.pubsub()
        await pubsub.subscribe(*channels)
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    data = message["data"].decode()
                    yield {"event": message["channel"].decode(), "data": data} if multi else {"data": data}
        finally:
            await pubsub.aclose()

    return EventSourceResponse(stream())


async def publish(request: Request) -> Response:
    receivers = await client.publish(request.path_params["channel"], await request.body())
    return JSONResponse({"receivers": receivers}, status_code=201)


app = Starlette(
    routes=[
        Route("/events", events),
        Route("/events/{channel}", events),
        Route("/publish/{channel}", publish, methods=["POST"]),
    ]
)

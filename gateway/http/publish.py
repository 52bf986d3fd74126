"""The publish endpoints as plain ASGI, in front of the Starlette app: ``POST /publish/{channel}`` and the batch
``POST /publish`` (gateway.http.batch).

A publish is a short request that programs send by the thousand a second, so what runs around it is its cost: through
Starlette's stack (its error and exception middlewares, the router trying every route, the Request object) a publish
cost the gateway about 300 µs of CPU, against 27 µs for Nchan. Here the path is matched once, the body read straight
from ``receive``, and the answer written in one piece (gateway.http.whole): 344 µs down to 239 µs per publish
(bench.publish, 2026-12-02, the same run's Nchan at 28 µs; the rest was uvicorn's own per-request cost and Redis's
side, see gateway.brokers.pipeline; today's figures, the floor under them and each step's cost are in the README's
*Performance*, from bench.publish and bench.publish_steps). Every documented behaviour is kept: auth,
the publish rate, the body limit, the same JSON errors and headers, the metrics, and the access log and CORS, which
wrap this front as they wrap the app (gateway.app). Anything else, a GET on these paths included, goes on to the
Starlette app.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.brokers.naming import validate_channel
from gateway.errors import BadRequest, PayloadTooLarge, RedisUnavailable
from gateway.http.batch import publish_batch
from gateway.http.front import ClientLeft, answer_error, route_path
from gateway.http.whole import send_json
from gateway.metrics import PUBLISH_SECONDS, PUBLISHES
from gateway.sse import event_type_problem

log = logging.getLogger("gateway.http.publish")

PREFIX = "/publish/"


class PublishFront:
    def __init__(self, app: ASGIApp, state: Any) -> None:
        """``state``: the Starlette app's state, where the lifespan puts the settings, hub, auth and publish rate."""
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and route_path(scope).startswith(PREFIX[:-1]):
            path = route_path(scope)
            if path != PREFIX[:-1] and not path.startswith(PREFIX):
                await self.app(scope, receive, send)  # /publishers, say: not ours
                return
            try:
                await (self._publish_batch if path == PREFIX[:-1] else self._publish)(scope, receive, send)
            except Exception as error:  # noqa: BLE001 - answered: a JSON error, or a 500 that is logged
                await answer_error(error, scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _publish(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        channel = validate_channel(route_path(scope)[len(PREFIX) :])
        event_type = _query_value(scope, "event")
        if event_type is not None and (problem := event_type_problem(event_type)):
            raise BadRequest(problem, code="bad_event_type")
        if state.auth.enabled:
            state.auth.for_publish(Request(scope, receive), channel)
        client = scope.get("client")
        state.publish_rate.take(client[0] if client else "-")
        body = await read_body(scope, receive, state.settings.max_body_bytes)
        try:
            data = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the body must be UTF-8 text", code="bad_body") from None
        try:
            with PUBLISH_SECONDS.time():
                event_id = await state.hub.broker.publish(channel, data, event_type)
        except RedisUnavailable:
            PUBLISHES.labels("redis_unavailable").inc()
            raise
        PUBLISHES.labels("published").inc()
        await send_json(
            send, 201, {"channel": channel, "id": event_id}, one_write=state.settings.write_path == "direct"
        )

    async def _publish_batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        may_publish = state.auth.publish_check(Request(scope, receive))
        client = scope.get("client")
        state.publish_rate.take(client[0] if client else "-")  # a batch is one request of the rate
        body = await read_body(scope, receive, state.settings.max_batch_bytes)
        status, answer = await publish_batch(state, body, may_publish)
        await send_json(send, status, answer, one_write=state.settings.write_path == "direct")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass ``limit`` bytes."""
    too_large = PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise too_large
            break
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft  # before its whole body came: nothing is published
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _query_value(scope: Scope, name: str) -> str | None:
    """Query parameter ``name`` as Starlette's ``query_params.get`` reads it (the last one wins); None when absent."""
    query: bytes = scope.get("query_string", b"")
    found = None
    if query:
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key == name:
                found = value
    return found

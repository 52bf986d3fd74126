"""The stream endpoints as plain ASGI, in front of the Starlette app: ``GET /events/{channel}`` and
``GET /events?channel=a&channel=b``.

When every client comes back at once (a deploy, a load balancer's timeout), what runs around each stream's start is
the gateway's cost: through Starlette's stack (its error and exception middlewares, the router trying each route's
pattern, the Request object) a stream's start was about half of the gateway's CPU in a reconnect storm. Here the path
is matched once and the request read straight from the scope; the access log and CORS still wrap it, as they wrap
the app (gateway.app), and the checks, errors and headers are the same as before. A HEAD, and anything else, goes on
to the Starlette app, whose route shares ``stream_for`` with this front.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.brokers.naming import validate_channel
from gateway.cursor import channel_set, parse_cursor
from gateway.errors import BadRequest, RedisUnavailable
from gateway.http.front import answer_error, route_path
from gateway.http.stream import EventStream, end_at_once
from gateway.security.auth import Grant
from gateway.security.tickets import QUERY_PARAMETER

TICKET_IN_QUERY = QUERY_PARAMETER.encode() + b"="

PATH = "/events"
PREFIX = PATH + "/"


class EventsFront:
    def __init__(self, app: ASGIApp, state: Any) -> None:
        """``state``: the Starlette app's state, where the lifespan puts the settings, hub and auth."""
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = route_path(scope)
            if path == PATH or path.startswith(PREFIX):
                try:
                    ticket = await ticket_for(self.state, scope)
                    stream = stream_for(self.state, scope, path[len(PREFIX) :] if path != PATH else None, ticket)
                except RedisUnavailable:
                    # The ticket could not be looked up: come back, as for any stream that Redis fails at its start.
                    await end_at_once(send, "Redis is unreachable; retry", self.state.settings.retry_ms, b"redis")
                    return
                except Exception as error:  # noqa: BLE001 - answered: a JSON error, or a 500 that is logged
                    await answer_error(error, scope, receive, send)
                    return
                # Outside the errors' handling: a stream's own failures end the stream, not in a JSON answer.
                await stream(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def ticket_for(state: Any, scope: Scope) -> Grant | None:
    """The grant of the stream ticket in the request's query (gateway.security.tickets), None without one; raises
    Unauthorized for a ticket that is unknown or has expired. A request without one pays a substring test."""
    query = scope.get("query_string", b"")
    if TICKET_IN_QUERY not in query or not state.auth.enabled:
        return None
    value = _last(parse_qsl(query.decode("latin-1"), keep_blank_values=True), QUERY_PARAMETER)
    return None if value is None else await state.tickets.redeem(value)


def stream_for(state: Any, scope: Scope, path_channel: str | None, ticket: Grant | None = None) -> EventStream:
    """The stream a request asks for, its channels, cursor and grant (a token's, or ``ticket``) checked; raises the
    GatewayError that says what is wrong."""
    settings = state.settings
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    if path_channel is not None:
        requested = [path_channel]
    else:
        requested = [value for key, value in query if key == "channel"]
        if not requested:
            raise BadRequest("name a channel: /events/NAME or /events?channel=a&channel=b", code="no_channel")
    channels = channel_set(validate_channel(name) for name in requested)
    if len(channels) > settings.max_channels:
        raise BadRequest(
            f"{len(channels)} channels requested; at most {settings.max_channels} per connection",
            code="too_many_channels",
        )
    # The header wins: a browser resends it on reconnect while the URL keeps the first lastEventId.
    last_event_id = _header(scope, b"last-event-id") or _last(query, "lastEventId")
    cursor = parse_cursor(last_event_id, channels) if last_event_id else None
    expires_at = None
    if state.auth.enabled:
        expires_at = state.auth.for_subscribe(HTTPConnection(scope), channels, ticket).expires_at
    start_event = _last(query, "start_event") not in (None, "", "0", "false")
    return EventStream(state.hub, channels, cursor, settings, expires_at=expires_at, start_event=start_event)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _last(query: list[tuple[str, str]], name: str) -> str | None:
    """The last value of a query parameter, as Starlette's ``query_params.get`` reads it; None when absent."""
    found = None
    for key, value in query:
        if key == name:
            found = value
    return found

"""What the plain-ASGI fronts (gateway.http.events, gateway.http.publish) share: the path as the router sees it,
and their errors answered as the Starlette app answers them."""

from __future__ import annotations

import logging

from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_response

log = logging.getLogger("gateway.http.front")


class ClientLeft(Exception):
    """The client closed the connection before its request was complete."""


def route_path(scope: Scope) -> str:
    """The path without the server's root path (uvicorn --root-path), as Starlette's router matches it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def answer_error(error: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a GatewayError with its JSON error, and anything else with a 500; a client that left gets nothing.

    Called from a front's ``except Exception``: an async context manager doing the same cost a tenth of a stream's
    start in a reconnect storm (bench.storm, fresh), for the generator it makes on every request.
    """
    if isinstance(error, ClientLeft):
        return  # nobody to answer
    if isinstance(error, GatewayError):
        await error.response()(scope, receive, send)
        return
    log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=error)
    await error_response(500, "internal", "the gateway failed to handle this request; see its log")(
        scope, receive, send
    )

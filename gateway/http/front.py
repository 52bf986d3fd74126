"""What the plain-ASGI fronts (gateway.http.events, gateway.http.publish) share: the path as the router sees it,
and their errors answered as the Starlette app answers them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_response

log = logging.getLogger("gateway.http.front")


class ClientLeft(Exception):
    """The client closed the connection before its request was complete."""


def route_path(scope: Scope) -> str:
    """The path without the server's root path (uvicorn --root-path), as Starlette's router matches it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


@asynccontextmanager
async def answer_errors(scope: Scope, receive: Receive, send: Send) -> AsyncIterator[None]:
    """Answer a GatewayError with its JSON error, and anything else with a 500; a client that left gets nothing."""
    try:
        yield
    except ClientLeft:
        pass  # nobody to answer
    except GatewayError as exc:
        await exc.response()(scope, receive, send)
    except Exception:
        log.exception("unhandled error on %s %s", scope["method"], scope["path"])
        await error_response(500, "internal", "the gateway failed to handle this request; see its log")(
            scope, receive, send
        )

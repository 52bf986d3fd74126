"""One access-log line per request, with credentials in the query string redacted.

uvicorn's own access log prints the raw query string, which would leak ``?access_token=`` tokens, so the gateway
turns it off and logs through this middleware instead.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("gateway.access")

SECRET_PARAMETERS = frozenset({"access_token", "token", "api_key", "ticket"})


def redact_query(query: str) -> str:
    """The query string with the value of every credential parameter replaced, however its name is encoded."""
    pieces = []
    for piece in query.split("&"):
        name, sep, _ = piece.partition("=")
        secret = unquote_plus(name).strip().lower() in SECRET_PARAMETERS
        pieces.append(f"{name}{sep}[redacted]" if secret and sep else piece)
    return "&".join(pieces)


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)  # with the log level above info, no wrapper to pay for
            return

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                query = redact_query(scope.get("query_string", b"").decode("latin-1"))
                client = "%s:%s" % (scope.get("client") or ("-", 0))
                target = scope["path"] + ("?" + query if query else "")
                request = f"{scope['method']} {target} HTTP/{scope.get('http_version', '1.1')}"
                fields = {"client": client, "request": request, "status": message["status"]}
                log.info('%s - "%s" %s', client, request, message["status"], extra={"fields": fields})
            await send(message)

        await self.app(scope, receive, logged_send)

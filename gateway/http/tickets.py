"""``POST /tickets``: a stream ticket for the channels the body names (gateway.security.tickets).

    POST /tickets  {"channels": ["stocks", "news"]}   with Authorization: Bearer <jwt> (or X-API-Key)
    201            {"ticket": "...", "channels": ["stocks", "news"], "expires_in": 60}

The credential must allow a stream of those channels, as ``GET /events`` would check it; the ticket then opens
``/events?channel=stocks&channel=news&ticket=...`` (or a stream of fewer of them) until it expires.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from gateway.brokers.naming import validate_channel
from gateway.cursor import channel_set
from gateway.errors import BadRequest, JSONLine, PayloadTooLarge

# A body names at most max_channels channels of at most 64 characters: far below this.
MAX_BODY_BYTES = 16 * 1024


async def create_ticket(request: Request) -> Response:
    state = request.app.state
    channels = _channels(await _body(request), state.settings.max_channels)
    credential_expires_at = state.auth.for_ticket(request, channels)
    # With authentication off a stream ignores its ticket: none is written to Redis, for anyone to fill it with.
    ticket = await state.tickets.issue(channels, credential_expires_at, keep=state.auth.enabled)
    return JSONLine(
        {"ticket": ticket.value, "channels": list(ticket.channels), "expires_in": round(ticket.expires_in, 3)},
        status_code=201,
        headers={"Cache-Control": "no-store"},  # a credential: no cache along the way may keep it
    )


async def _body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"a ticket request's body is at most {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _channels(body: bytes, max_channels: int) -> tuple[str, ...]:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest('the body must be JSON: {"channels": ["a", "b"]}', code="bad_body") from None
    names = request.get("channels") if isinstance(request, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise BadRequest('name the channels as a list of strings: {"channels": ["a", "b"]}', code="bad_body")
    channels = channel_set(validate_channel(name) for name in names)
    if len(channels) > max_channels:
        raise BadRequest(
            f"{len(channels)} channels requested; at most {max_channels} per connection", code="too_many_channels"
        )
    return channels

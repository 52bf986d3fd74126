"""``POST /publish``: many events in one request, one JSON object a line (NDJSON).

    {"channel": "stocks", "data": "{\\"sym\\":\\"AAPL\\",\\"px\\":189.2}", "event": "tick"}
    {"channel": "news", "data": "markets open"}

Each line is checked as a single publish is: the channel's name, the event type, the data's size (``max_body_bytes``)
and the right to publish to that channel. A bad line is reported by its number and does not stop the others, which
are published, in order per channel. The whole request is refused only for what no line can cure: credentials that
are missing or not valid (401), a body over ``max_batch_bytes`` or more lines than ``max_batch_events`` (413), a body
that is not UTF-8 or has no event (400), the publish rate (429, one token a request).

The answer is 201 when every line was published, else 207, with one result per line, in order::

    {"published": 1, "failed": 1, "results": [{"line": 1, "channel": "stocks", "id": "1700000000000-0"},
                                             {"line": 2, "error": "bad_channel", "detail": "..."}]}
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope

from gateway.brokers.naming import validate_channel
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, Unauthorized
from gateway.metrics import PUBLISH_SECONDS, PUBLISHES
from gateway.sse import event_type_problem

Line = tuple[int, str, str, str | None]  # line number, channel, data, event type


async def publish_batch(state: Any, scope: Scope, receive: Receive, body: bytes) -> tuple[int, dict[str, Any]]:
    """The status and the answer of a batch whose body was read."""
    settings = state.settings
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body must be UTF-8 text, one JSON object a line", code="bad_body") from None
    lines = [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not lines:
        raise BadRequest("the batch has no event: send one JSON object a line", code="empty_batch")
    if len(lines) > settings.max_batch_events:
        raise PayloadTooLarge(
            f"{len(lines)} events in one batch; at most {settings.max_batch_events}", code="too_many_events"
        )
    request = Request(scope, receive) if state.auth.enabled else None
    allowed: dict[str, GatewayError | None] = {}
    results: list[dict[str, Any] | None] = [None] * len(lines)
    good: list[tuple[int, Line]] = []
    for position, (number, raw) in enumerate(lines):
        try:
            line = _parse(number, raw, settings.max_body_bytes)
            if request is not None:
                _check_grant(state.auth, request, line[1], allowed)
        except Unauthorized:
            raise  # the credentials themselves: no line can be published with them
        except GatewayError as exc:
            results[position] = _failure(number, exc)
            continue
        good.append((position, line))
    if good:
        with PUBLISH_SECONDS.time():
            outcomes = await state.hub.broker.publish_many(
                [(channel, data, kind) for _, (_, channel, data, kind) in good]
            )
        for (position, (number, channel, _, _)), outcome in zip(good, outcomes, strict=True):
            results[position] = (
                _failure(number, outcome) if isinstance(outcome, GatewayError) else
                {"line": number, "channel": channel, "id": outcome}
            )  # fmt: skip
    published = sum(1 for result in results if result is not None and "id" in result)
    failed = len(lines) - published
    PUBLISHES.labels("published").inc(published)
    if failed:
        PUBLISHES.labels("refused").inc(failed)
    return (201 if not failed else 207), {"published": published, "failed": failed, "results": results}


def _parse(number: int, raw: str, max_data_bytes: int) -> Line:
    try:
        item = json.loads(raw)
    except ValueError:
        raise BadRequest(f"line {number} is not JSON", code="bad_line") from None
    if not isinstance(item, dict):
        raise BadRequest(f"line {number} is not a JSON object", code="bad_line")
    channel, data, kind = item.get("channel"), item.get("data"), item.get("event")
    if not isinstance(channel, str):
        raise BadRequest(f'line {number} has no "channel" string', code="bad_line")
    if not isinstance(data, str):
        raise BadRequest(f'line {number} has no "data" string', code="bad_line")
    if kind is not None and not isinstance(kind, str):
        raise BadRequest(f'line {number}: "event" must be a string', code="bad_line")
    validate_channel(channel)
    if kind is not None and (problem := event_type_problem(kind)):
        raise BadRequest(problem, code="bad_event_type")
    if len(data) > max_data_bytes // 4 and len(data.encode()) > max_data_bytes:
        raise PayloadTooLarge(f"the data of line {number} is larger than the limit of {max_data_bytes} bytes")
    return number, channel, data, kind


def _check_grant(auth: Any, request: Request, channel: str, allowed: dict[str, GatewayError | None]) -> None:
    """auth.for_publish once per channel of the batch."""
    if channel not in allowed:
        try:
            auth.for_publish(request, channel)
            allowed[channel] = None
        except Unauthorized:
            raise
        except GatewayError as exc:
            allowed[channel] = exc
    if (refusal := allowed[channel]) is not None:
        raise refusal


def _failure(number: int, error: GatewayError) -> dict[str, Any]:
    return {"line": number, "error": error.code, "detail": error.detail}

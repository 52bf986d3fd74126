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
from collections.abc import Callable
from typing import Any

from gateway.brokers.naming import validate_channel
from gateway.errors import BadRequest, Forbidden, GatewayError, PayloadTooLarge
from gateway.metrics import BATCH_SECONDS, PUBLISHES
from gateway.sse import event_type_problem

Line = tuple[int, str, str, str | None]  # line number, channel, data, event type


async def publish_batch(state: Any, body: bytes, may_publish: Callable[[str], bool]) -> tuple[int, dict[str, Any]]:
    """The status and the answer of a batch whose body was read; ``may_publish`` tells the channels its credentials
    grant (gateway.security.auth ``publish_check``)."""
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
    results: list[dict[str, Any] | None] = [None] * len(lines)
    good: list[tuple[int, Line]] = []
    for position, (number, raw) in enumerate(lines):
        try:
            line = _parse(number, raw, settings.max_body_bytes)
            if not may_publish(line[1]):
                raise Forbidden(f"the credentials do not grant publishing to {line[1]}")
        except GatewayError as exc:
            results[position] = _failure(number, exc)
            continue
        good.append((position, line))
    if good:
        with BATCH_SECONDS.time():
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
    unavailable = sum(1 for r in results if r is not None and r.get("error") in ("redis_unavailable", "not_replicated"))
    PUBLISHES.labels("published").inc(published)
    if unavailable:
        PUBLISHES.labels("redis_unavailable").inc(unavailable)
    if failed - unavailable:
        PUBLISHES.labels("refused").inc(failed - unavailable)
    return (201 if not failed else 207), {"published": published, "failed": failed, "results": results}


def _parse(number: int, raw: str, max_data_bytes: int) -> Line:
    try:
        item = json.loads(raw)
    except (ValueError, RecursionError):
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
    try:
        size = len(data.encode())
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800): no UTF-8 text can carry it
        raise BadRequest(f"the data of line {number} is not valid Unicode", code="bad_line") from None
    if size > max_data_bytes:
        raise PayloadTooLarge(f"the data of line {number} is larger than the limit of {max_data_bytes} bytes")
    return number, channel, data, kind


def _failure(number: int, error: GatewayError) -> dict[str, Any]:
    return {"line": number, "error": error.code, "detail": error.detail}

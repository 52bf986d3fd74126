"""A batch publish: many events, of one channel or many, stored with one script call per channel and one pipeline
per Redis node.

The publish script takes a channel's events together (publish.lua's batch form), so Redis runs one script, one read
of the previous id and one expiry for all of them instead of one each. Calls are cut at ``EVENTS_PER_CALL`` events, as
a script holds Redis for its whole run. With ``publish_replicas`` the batch is written, then WAITed for on the same
connection, and only then sent live, as a single publish is (gateway.brokers.buffer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.brokers.connections import REDIS_FAILURES
from gateway.brokers.envelope import encode_pubsub
from gateway.errors import BadRequest, GatewayError, RedisUnavailable
from gateway.sse import event_type_problem

if TYPE_CHECKING:
    from gateway.brokers.buffer import RedisBuffer, ScriptCall

EVENTS_PER_CALL = 500  # about a millisecond of Redis per script call
Outcome = str | GatewayError  # an event's id, or why it was not published

Pending = tuple["ScriptCall", list[int]]  # a script call and the indexes of the events it carries


async def publish_many(buffer: RedisBuffer, events: Sequence[tuple[str, str, str | None]]) -> list[Outcome]:
    """Publish ``(channel, data, event type)`` events; one outcome per event, in order. Order per channel is kept."""
    outcomes: list[Outcome | None] = [None] * len(events)
    by_channel: dict[str, list[int]] = {}
    for n, (channel, _, event_type) in enumerate(events):
        if event_type is not None and (problem := event_type_problem(event_type)):
            outcomes[n] = BadRequest(problem, code="bad_event_type")
        else:
            by_channel.setdefault(channel, []).append(n)
    by_node: dict[str, tuple[Any, list[Pending]]] = {}
    for channel, indexes in by_channel.items():
        keys = [buffer.naming.stream_key(channel), buffer.naming.pubsub_channel(channel)]
        try:
            name, client = await buffer.pipeline_route(keys[0])
        except REDIS_FAILURES as exc:  # no primary known for its slot: nothing of this channel was written
            for n in indexes:
                outcomes[n] = _unavailable(exc)
            continue
        for start in range(0, len(indexes), EVENTS_PER_CALL):
            chunk = indexes[start : start + EVENTS_PER_CALL]
            by_node.setdefault(name, (client, []))[1].append(((keys, _script_args(buffer, events, chunk)), chunk))
    nodes = list(by_node.values())
    done = await asyncio.gather(
        *(_publish_on_node(buffer, client, pending, events, outcomes) for client, pending in nodes),
        return_exceptions=True,
    )
    for (_, pending), error in zip(nodes, done, strict=True):
        if isinstance(error, BaseException):  # a bug, not Redis: still one outcome per event, never a whole 500
            for _, chunk in pending:
                for n in chunk:
                    if outcomes[n] is None:
                        outcomes[n] = GatewayError(f"the gateway failed to publish this event ({error!r})")
    return [outcome if outcome is not None else GatewayError("not published") for outcome in outcomes]


def _unavailable(exc: BaseException) -> RedisUnavailable:
    return RedisUnavailable(f"Redis is unreachable; the event was not published ({exc})")


def _script_args(buffer: RedisBuffer, events: Sequence[tuple[str, str, str | None]], chunk: list[int]) -> list[Any]:
    _, data, event_type = events[chunk[0]]
    mode = "LATER" if buffer.replicas else buffer.publish_command
    args: list[Any] = [*buffer.script_limits(event_type, data), mode]
    for n in chunk[1:]:
        _, data, event_type = events[n]
        args += [event_type or "", data]
    return args


async def _publish_on_node(
    buffer: RedisBuffer,
    client: Any,
    pending: list[Pending],
    events: Sequence[tuple[str, str, str | None]],
    outcomes: list[Outcome | None],
) -> None:
    calls = [call for call, _ in pending]
    try:
        if buffer.replicas:
            results = await _write_and_wait(buffer, client, calls)
        else:
            results = await buffer.run_scripts_together(client, calls)
    except REDIS_FAILURES as exc:
        results = [exc] * len(pending)
    for ((keys, _), chunk), result in zip(pending, results, strict=True):
        if isinstance(result, GatewayError):
            failure: GatewayError | None = result
        elif isinstance(result, BaseException):
            failure = _unavailable(result)
        else:
            failure = None
        if failure is not None:
            for n in chunk:
                outcomes[n] = failure
            continue
        ids = _ids(result, later=bool(buffer.replicas))
        if buffer.replicas:
            try:
                await _send_live(buffer, client, keys[1], chunk, events, result)
            except REDIS_FAILURES as exc:
                # Stored and replicated, but not sent live: as a single publish, not acknowledged (a resume or
                # the next event's missed-message check delivers them).
                for n in chunk:
                    outcomes[n] = RedisUnavailable(f"the events were stored but not sent live ({exc})")
                continue
        for n, stream_id in zip(chunk, ids, strict=True):
            outcomes[n] = stream_id


def _ids(result: Any, *, later: bool) -> list[str]:
    """The ids a script call returned: one id, a list of ids, or (LATER) ids and previous ids in turn."""
    items = result[0::2] if later else [result] if isinstance(result, bytes | str) else list(result)
    return [item.decode() if isinstance(item, bytes) else str(item) for item in items]


async def _write_and_wait(buffer: RedisBuffer, client: Any, calls: list[ScriptCall]) -> list[Any]:
    """The scripts and one WAIT on one connection; every call fails with not_replicated if the WAIT falls short."""
    results, replicated = await buffer.pipeline_then_wait(client, calls)
    if replicated < buffer.replicas:
        short = RedisUnavailable(
            f"only {replicated} of {buffer.replicas} replicas had the events in time; they were not sent live",
            code="not_replicated",
        )
        return [short if not isinstance(result, BaseException) else result for result in results]
    return results


async def _send_live(
    buffer: RedisBuffer,
    client: Any,
    pubsub_channel: str,
    chunk: list[int],
    events: Sequence[tuple[str, str, str | None]],
    result: list[Any],
) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for position, n in enumerate(chunk):
            _, data, event_type = events[n]
            envelope = encode_pubsub(result[2 * position], result[2 * position + 1], event_type, data)
            pipe.execute_command(buffer.publish_command, pubsub_channel, envelope)
        await pipe.execute()

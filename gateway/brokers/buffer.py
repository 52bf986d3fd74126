"""The replay buffer and the publish script, as one Redis client (a single node's or a cluster's) reaches them.

Both brokers share this: the commands are the same, and a cluster client routes each by its key's slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

from redis.exceptions import AskError, MovedError, NoScriptError

from gateway.brokers.batch import publish_many
from gateway.brokers.connections import REDIS_FAILURES
from gateway.brokers.envelope import encode_pubsub, from_stream_entry
from gateway.brokers.merging import merge, split
from gateway.brokers.naming import Naming
from gateway.brokers.pipeline import Coalescer
from gateway.brokers.protocol import BACKLOG_PAGE
from gateway.config import Settings, split_list
from gateway.cursor import MAX_STREAM_ID, ZERO, StreamId, format_stream_id, parse_stream_id
from gateway.errors import BadRequest, GatewayError, RedisUnavailable
from gateway.events import Event
from gateway.sse import event_type_problem

PUBLISH_SCRIPT = resources.files("gateway.brokers").joinpath("publish.lua").read_text()
ScriptCall = tuple[list[str], list[Any]]  # the script's keys and arguments


class RedisBuffer:
    """Publish, tail, backlog and buffered for a client with the redis-py command API; ``publish_command`` is
    PUBLISH on one node and SPUBLISH on a cluster (the channel then stays on its slot's node).

    With ``publish_replicas`` N > 0 a publish is three steps, in this order: the script writes the entry and sends
    nothing live; WAIT, on the same connection, until N replicas have it; only then the envelope goes out live. So no
    event is sent live that a failover could still take out of the buffer, and the publisher's 201 means that N
    replicas hold it. (A resume that reads the buffer during the WAIT can see the entry early; that window is one
    WAIT long.) If the WAIT falls short, the answer is 503 ``not_replicated`` and nothing is sent live; the entry
    stays in the buffer (Redis cannot take it back), so a client may still read it later from there.
    """

    def __init__(self, client: Any, settings: Settings, *, publish_command: str = "PUBLISH") -> None:
        self.client = client
        self.naming = Naming(settings.key_prefix, split_list(settings.raw_channels))
        self._maxlen = settings.buffer_maxlen
        self._max_age_ms = int(settings.buffer_max_age * 1000)
        self._idle_ttl_ms = int(settings.buffer_idle_ttl * 1000)
        self.publish_command = publish_command
        self._publish = client.register_script(PUBLISH_SCRIPT)
        self.replicas = settings.publish_replicas
        self.replicas_timeout_ms = max(1, int(settings.publish_replicas_timeout * 1000))
        self._pipelined = settings.publish_pipeline
        self._merged = settings.publish_merge
        self._coalescers: dict[str, Coalescer[ScriptCall]] = {}  # by node ("" on one Redis), see brokers.pipeline

    def script_limits(self, event_type: str | None, data: str) -> list[Any]:
        """The publish script's arguments 1 to 5 for one event (see publish.lua)."""
        return [self._maxlen, self._max_age_ms, event_type or "", data, self._idle_ttl_ms]

    async def publish_many(self, events: Sequence[tuple[str, str, str | None]]) -> list[str | GatewayError]:
        return await publish_many(self, events)

    async def publish(self, channel: str, data: str, event_type: str | None = None) -> str:
        if event_type is not None and (problem := event_type_problem(event_type)):
            raise BadRequest(problem, code="bad_event_type")
        keys = [self.naming.stream_key(channel), self.naming.pubsub_channel(channel)]
        args = self.script_limits(event_type, data)
        try:
            if self.replicas:
                return await self._publish_replicated(keys, args, event_type, data)
            stream_id = await self._run_publish_script(keys, [*args, self.publish_command])
        except REDIS_FAILURES as exc:
            raise RedisUnavailable(f"Redis is unreachable; the event was not published ({exc})") from exc
        return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)

    async def _publish_replicated(self, keys: list[str], args: list[Any], event_type: str | None, data: str) -> str:
        # One connection for the write and the WAIT: WAIT counts the replicas that have this connection's writes.
        async with (await self._primary_for(keys[0])).pipeline(transaction=False) as pipe:
            await self._publish(keys=keys, args=[*args, "LATER"], client=pipe)
            pipe.wait(self.replicas, self.replicas_timeout_ms)
            (stream_id, previous), replicated = await pipe.execute()
        if replicated < self.replicas:
            raise RedisUnavailable(
                f"only {replicated} of {self.replicas} replicas had the event after "
                f"{self.replicas_timeout_ms} ms; it was not sent live",
                code="not_replicated",
            )
        await self._send_live(keys[1], encode_pubsub(stream_id, previous, event_type, data))
        return stream_id.decode()

    async def _run_publish_script(self, keys: list[str], args: list[Any]) -> Any:
        if not self._pipelined:
            return await self._run_script_now((keys, args))
        name, client = await self.pipeline_route(keys[0])
        coalescer = self._coalescers.get(name)
        if coalescer is None:
            coalescer = self._coalescers[name] = Coalescer(
                self._run_script_now, lambda calls: self._run_queued(client, calls)
            )
        return await coalescer.call((keys, args))

    async def _run_queued(self, client: Any, calls: list[ScriptCall]) -> list[Any]:
        """The publishes that queued for one round trip; those of one channel as one script call (brokers.merging)."""
        if not self._merged:
            return await self.run_scripts_together(client, calls)
        merged = merge(calls)
        return split(merged, await self.run_scripts_together(client, [call for call, _ in merged]), len(calls))

    async def run_scripts_together(self, client: Any, calls: list[ScriptCall]) -> list[Any]:
        """One pipeline for ``calls``, a result or an exception each, in order."""
        results = await self._pipeline(client, calls)
        again = [n for n, result in enumerate(results) if isinstance(result, NoScriptError)]
        if again:  # a new server or a promoted replica has no scripts: load it, and send those again, in order
            try:
                await self._load_publish_script(calls[again[0]][0][0])
                retried = await self._pipeline(client, [calls[n] for n in again])
            except REDIS_FAILURES as exc:
                retried = [exc] * len(again)  # those only: the others' results stand
            for n, result in zip(again, retried, strict=True):
                results[n] = result
        for n, result in enumerate(results):
            if isinstance(result, (MovedError, AskError)):  # not run there: the slot is elsewhere now
                try:
                    results[n] = await self._run_script_now(calls[n])
                except REDIS_FAILURES as exc:
                    results[n] = exc
        return results

    async def _pipeline(self, client: Any, calls: list[ScriptCall], wait: bool = False) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._publish.sha, len(keys), *keys, *args)
            if wait:  # on the same connection as the writes: WAIT counts the replicas that have them
                pipe.wait(self.replicas, self.replicas_timeout_ms)
            return list(await pipe.execute(raise_on_error=False))

    async def pipeline_then_wait(self, client: Any, calls: list[ScriptCall]) -> tuple[list[Any], int]:
        """``calls`` and a WAIT on one connection: each call's result, and how many replicas have them all."""
        *results, replicated = await self._pipeline(client, calls, wait=True)
        if isinstance(replicated, BaseException):
            raise replicated
        again = [n for n, result in enumerate(results) if isinstance(result, NoScriptError)]
        if again:
            try:
                await self._load_publish_script(calls[0][0][0])
                *retried, second = await self._pipeline(client, [calls[n] for n in again], wait=True)
            except REDIS_FAILURES as exc:
                retried, second = [exc] * len(again), replicated
            if isinstance(second, BaseException):
                raise second
            # The second WAIT may have run on another connection: only the lower count covers both rounds.
            replicated = min(int(replicated), int(second))
            for n, result in zip(again, retried, strict=True):
                results[n] = result
        return results, int(replicated)

    async def _close_pipelines(self) -> None:
        await asyncio.gather(*(coalescer.close() for coalescer in self._coalescers.values()))

    async def pipeline_route(self, key: str) -> tuple[str, Any]:
        """Where a pipeline for ``key`` goes: a name, and a client whose connections reach the key's primary."""
        return "", self.client

    async def _run_script_now(self, call: ScriptCall) -> Any:
        keys, args = call
        try:
            return await self._evalsha(keys, args)
        except NoScriptError:
            # A new server, a flushed cache, a promoted replica (the cache is not replicated): load it where it ran.
            await self._load_publish_script(keys[0])
            return await self._evalsha(keys, args)

    async def _evalsha(self, keys: list[str], args: list[Any]) -> Any:
        # The one-node client's connections retry nothing: a write whose answer was lost may have been stored, and
        # sending it again would store it twice. The publisher gets a 503 and decides.
        return await self.client.evalsha(self._publish.sha, len(keys), *keys, *args)

    async def _load_publish_script(self, key: str) -> None:
        await self.client.script_load(PUBLISH_SCRIPT)

    async def _primary_for(self, key: str) -> Any:
        """A client whose connections all go to the primary of ``key``; one node's client is that already."""
        return self.client

    async def _send_live(self, pubsub_channel: str, envelope: bytes) -> None:
        await self.client.execute_command(self.publish_command, pubsub_channel, envelope)

    async def tail(self, channel: str) -> StreamId:
        try:
            newest = await self.client.xrevrange(self.naming.stream_key(channel), count=1)
        except REDIS_FAILURES as exc:
            raise RedisUnavailable(f"Redis is unreachable ({exc})") from exc
        return parse_stream_id(newest[0][0].decode()) if newest else ZERO

    async def backlog(self, channel: str, after: StreamId, until: StreamId | None = None) -> AsyncIterator[list[Event]]:
        if after == MAX_STREAM_ID or (until is not None and until <= after):
            return  # nothing can come after it, and Redis refuses an exclusive range from it
        key = self.naming.stream_key(channel)
        start, end = "(" + format_stream_id(after), "+" if until is None else format_stream_id(until)
        while True:
            try:
                page = await self.client.xrange(key, min=start, max=end, count=BACKLOG_PAGE)
            except REDIS_FAILURES as exc:
                raise RedisUnavailable(f"Redis is unreachable ({exc})") from exc
            if not page:
                return
            yield [from_stream_entry(channel, entry) for entry in page]
            if len(page) < BACKLOG_PAGE:
                return
            start = "(" + page[-1][0].decode()

    async def buffered(self, channel: str) -> bool:
        try:
            return bool(await self.client.exists(self.naming.stream_key(channel)))
        except REDIS_FAILURES as exc:
            raise RedisUnavailable(f"Redis is unreachable ({exc})") from exc

    async def keep_ticket(self, digest: str, grant: bytes, ttl_ms: int) -> None:
        try:
            await self.client.set(self.naming.ticket_key(digest), grant, px=ttl_ms)
        except REDIS_FAILURES as exc:
            raise RedisUnavailable(f"Redis is unreachable ({exc})") from exc

    async def ticket_grant(self, digest: str) -> bytes | None:
        try:
            return await self.client.get(self.naming.ticket_key(digest))
        except REDIS_FAILURES as exc:
            raise RedisUnavailable(f"Redis is unreachable ({exc})") from exc

"""One Redis Pub/Sub connection (the node's, or on a cluster one per primary): reference-counted subscriptions,
reconnect with backoff.

Pub/Sub delivers at most once, so whatever was published while the connection was down is gone from it. After
every reconnect the upstream resubscribes, and as Redis confirms each channel it calls ``on_resubscribed`` so the
hub can fill the gap from the replay buffer before any newer live message of that channel is read.

Pub/Sub is a doorbell; the buffer is the truth. Each live event names the id before it, so one whose previous id is
not the last id heard on its channel shows a missed message (an output-buffer disconnect, a failover, anything), and
the same catch-up reads the buffer before that event is delivered.

On a cluster (``sharded``) there is one Upstream per primary, using SSUBSCRIBE, one channel per command (channels of
different slots cannot share one). When the node pushes an unsolicited ``sunsubscribe`` (its slot moved, or a
failover), or the connection fails, the upstream tells its owner (gateway.brokers.cluster), which refreshes the slot
map and hands each channel to the upstream of its new primary with ``release`` and ``adopt``; the channel is caught
up from its buffer as soon as the new node confirms it.

A channel is unsubscribed a moment after its last local subscriber leaves, and only once Redis has confirmed its
subscription: so a SUBSCRIBE confirmation can never be mistaken for a later one of the same channel.

A raw channel (SSE_GATEWAY_RAW_CHANNELS) is also heard on its bare name, where other programs PUBLISH: that name is
subscribed and unsubscribed with the channel's own, on the same connection (with a classic SUBSCRIBE on a cluster
too: a classic PUBLISH reaches every node), and the channel counts as confirmed once both are. What comes on it is
data only, with no id (gateway.brokers.bare).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisError

from gateway.brokers.bare import BareMessages
from gateway.brokers.connections import tcp_options
from gateway.brokers.envelope import decode_pubsub
from gateway.brokers.naming import Naming
from gateway.cursor import StreamId
from gateway.errors import RedisUnavailable
from gateway.events import Event
from gateway.metrics import MESSAGES_IN, MISSED_LIVE, REDIS_RECONNECTS
from gateway.tasks import stop_task, stop_tasks

log = logging.getLogger("gateway.brokers.upstream")

# A connection that has been silent this long is pinged; one silent twice as long is taken for dead. This catches
# half-open sockets that a blocking read would wait on for ever.
SILENCE_BEFORE_PING = 5.0
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0
# Browsers reconnect within seconds: keeping an idle subscription a little while saves an UNSUBSCRIBE/SUBSCRIBE pair.
UNSUBSCRIBE_DELAY = 1.0
# Messages read before the reader lets the loop turn once (see _read).
YIELD_EVERY = 64


class _Channel:
    __slots__ = ("refcount", "sent", "confirmed", "awaiting", "heard", "behind", "bare")

    def __init__(self, bare: str | None = None) -> None:
        self.refcount = 0
        self.sent = False  # SUBSCRIBE sent on the current connection
        self.confirmed = asyncio.Event()  # Redis confirmed it on the current connection, its bare name too
        self.awaiting: set[str] = set()  # the Pub/Sub names whose SUBSCRIBE Redis has not confirmed yet
        self.bare = bare  # the bare Redis channel heard for it as well (a raw channel), or None
        self.heard: StreamId | None = None  # the last buffered id heard live on the current connection
        self.behind = False  # live messages may have been missed: catch up once Redis confirms the subscription

    def missed_before(self, event: Event) -> bool:
        """Whether a message came between the last one heard and ``event``; remembers ``event`` as heard.

        ``heard`` only moves forward: an event older than it arrived after a newer one (publishes that wait for
        replicas send live in the order their WAITs end), and the catch-up for the newer one has read it already.
        """
        heard, stream_id = self.heard, event.stream_id
        if stream_id is None or (heard is not None and stream_id <= heard):
            return False
        self.heard = stream_id
        return heard is not None and event.previous is not None and event.previous != heard


class Upstream:
    def __init__(
        self,
        url: str,
        naming: Naming,
        on_event: Callable[[Event], None],
        on_resubscribed: Callable[[str, StreamId | None], Awaitable[None]],
        *,
        sharded: bool = False,
        live_in_order: bool = True,
        on_trouble: Callable[[str | None], None] | None = None,
        bare: BareMessages | None = None,
    ) -> None:
        # Its own client with no retries inside redis-py: every failure must reach the loop below, which alone
        # knows that a catch-up read is needed after the reconnect.
        self._client = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **tcp_options(url))
        self._naming = naming
        self._on_event = on_event
        self._on_resubscribed = on_resubscribed
        self._sharded = sharded
        # False when publishes wait for replicas and then send live: two publishes' live messages may then arrive in
        # the opposite order of their ids, even the first one heard after a subscription.
        self._live_in_order = live_in_order
        # Called with a channel the node unsubscribed by itself, or None when the connection failed.
        self._on_trouble = on_trouble
        # What bare channels' messages become; without it no bare channel is heard.
        self._bare = bare
        self._channels: dict[str, _Channel] = {}
        self._pubsub: aioredis.client.PubSub | None = None  # set only while the connection is usable
        self._session_pubsub: aioredis.client.PubSub | None = None  # the current session's, usable or not
        # Checked by every loop below, so the upstream ends even if a cancellation is lost (see gateway.tasks).
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-upstream")

    async def stop(self) -> None:
        """End the reader and every pending send in bounded time, then close the connection."""
        self._stopping = True
        await stop_task(self._task, on_stuck=self._close_under_reader)
        await stop_tasks(list(self._sends))
        await self._client.aclose()

    async def _close_under_reader(self) -> None:
        # A closed socket fails the read at once, and the loops then see that the upstream is stopping.
        pubsub = self._session_pubsub
        if pubsub is not None and pubsub.connection is not None:
            await pubsub.connection.disconnect(nowait=True)

    def subscribe(self, channel: str) -> asyncio.Event:
        """Count one more local subscriber; returns the event set once Redis has confirmed the subscription."""
        state = self._channels.get(channel)
        if state is None:
            bare = None if self._bare is None else self._naming.bare_channel(channel)
            state = self._channels[channel] = _Channel(bare)
        state.refcount += 1
        if not state.sent and self._pubsub is not None:
            self._send(state, channel)
        return state.confirmed

    def unsubscribe(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        state.refcount -= 1
        if state.refcount <= 0:
            asyncio.get_running_loop().call_later(UNSUBSCRIBE_DELAY, self._drop_if_idle, channel, state)

    @property
    def channels(self) -> list[str]:
        return [channel for channel, state in self._channels.items() if state.refcount > 0]

    def holds(self, channel: str) -> bool:
        return channel in self._channels

    def unsent(self) -> list[str]:
        """Channels wanted but not subscribed on the current connection (a node unsubscribed them)."""
        return [channel for channel, state in self._channels.items() if not state.sent]

    def release(self, channel: str) -> _Channel | None:
        """Give up a channel whose slot another node serves now, for ``adopt`` there; nothing is sent to this node,
        which no longer serves it (it unsubscribed its subscribers when the slot left), but for its bare name.
        """
        state = self._channels.pop(channel, None)
        if state is not None and state.bare is not None and self._pubsub is not None:
            # A node drops only shard subscriptions when a slot leaves it: the bare one goes with the channel to its
            # new node, and must not stay here too. Until Redis has it, what comes on it here is dropped (not held).
            self._spawn(self._pubsub.unsubscribe(state.bare))
        return state

    def adopt(self, channel: str, state: _Channel) -> None:
        """Take over a channel from another node's upstream: subscribe, and catch up once confirmed."""
        if state.refcount <= 0:
            return  # its last subscriber left, and its delayed unsubscribe was the old upstream's: let it go
        state.sent, state.behind, state.heard = False, True, None
        self._channels[channel] = state
        if self._pubsub is not None:
            self._send(state, channel)

    def resubscribe(self, channel: str) -> None:
        """Subscribe again to a channel this node unsubscribed by itself, then catch it up."""
        state = self._channels.get(channel)
        if state is not None and not state.sent and self._pubsub is not None:
            state.behind = True
            self._send(state, channel)

    def _send(self, state: _Channel, channel: str, command: str = "subscribe") -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        subscribing = command == "subscribe"
        state.sent = subscribing
        own, bare = self._naming.pubsub_channel(channel), state.bare
        if subscribing:
            state.awaiting = {own} if bare is None else {own, bare}
        if self._sharded:
            self._spawn(pubsub.ssubscribe(own) if subscribing else pubsub.sunsubscribe(own))
            if bare is not None:  # classic, not sharded: a bare PUBLISH is broadcast to every node
                self._spawn(pubsub.subscribe(bare) if subscribing else pubsub.unsubscribe(bare))
        else:
            names = (own,) if bare is None else (own, bare)
            self._spawn(pubsub.subscribe(*names) if subscribing else pubsub.unsubscribe(*names))

    def _spawn(self, command: Awaitable[object]) -> None:
        task = asyncio.create_task(self._quietly(command))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    @staticmethod
    async def _quietly(command: Awaitable[object]) -> None:
        # A failed send means a failed connection, which the reader loop notices and repairs on its own.
        with contextlib.suppress(RedisError, OSError):
            await command

    def _drop_if_idle(self, channel: str, state: _Channel) -> None:
        if self._channels.get(channel) is not state or state.refcount > 0:
            return
        if state.sent and not state.confirmed.is_set():
            # Its SUBSCRIBE is still unanswered: unsubscribing now could let that answer pass for a later one's.
            asyncio.get_running_loop().call_later(UNSUBSCRIBE_DELAY, self._drop_if_idle, channel, state)
            return
        del self._channels[channel]
        if self._pubsub is None:
            return
        if state.sent:
            self._send(state, channel, "unsubscribe")
        elif self._sharded and state.bare is not None:
            # The node dropped the shard subscription by itself (its slot left), not the classic bare one, and the
            # channel is gone before the topology check could release it.
            self._spawn(self._pubsub.unsubscribe(state.bare))

    async def _run(self) -> None:
        backoff = BACKOFF_START
        while not self._stopping:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever broke the connection, the cure is a new one
                if self._stopping:
                    return
                log.warning("redis pub/sub connection lost (%s); reconnecting in %.2fs", exc, backoff)
                REDIS_RECONNECTS.inc()
                if self._on_trouble is not None:
                    self._on_trouble(None)
            if self.connected.is_set():  # the session had been up: start the backoff afresh
                backoff = BACKOFF_START
            self.connected.clear()
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        """One connection's life: subscribe to every wanted channel, then read (and catch up) until it fails."""
        pubsub = self._session_pubsub = self._client.pubsub()
        try:
            await pubsub.ping()  # connects; raises if Redis is not there
            if self._stopping:
                return
            for channel, state in list(self._channels.items()):
                state.sent = False
                state.heard = None  # the catch-up after the (re)subscription covers what came before
                state.behind = state.behind or self.reconnects > 0
                state.confirmed = asyncio.Event() if state.confirmed.is_set() else state.confirmed
                if state.refcount <= 0:
                    del self._channels[channel]
            wanted = self.channels
            for channel, state in self._channels.items():
                state.sent = True
                own = self._naming.pubsub_channel(channel)
                state.awaiting = {own} if state.bare is None else {own, state.bare}
            if wanted and self._sharded:
                for channel in wanted:  # one per command: channels of different slots cannot share one
                    await pubsub.ssubscribe(self._naming.pubsub_channel(channel))
            elif wanted:
                await pubsub.subscribe(*(self._naming.pubsub_channel(c) for c in wanted))
            # Read again after the awaits above: a channel a cluster handed to another node meanwhile is not held.
            bare = [state.bare for state in self._channels.values() if state.sent and state.bare is not None]
            if bare:
                await pubsub.subscribe(*bare)
            self._pubsub = pubsub
            self.connected.set()
            for channel, state in self._channels.items():  # asked for while the subscriptions above were sent
                if not state.sent:
                    self._send(state, channel)
            await self._read(pubsub)
        finally:
            self._pubsub = self._session_pubsub = None
            await pubsub.aclose()

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        pinged = False
        read = 0
        while not self._stopping:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except MovedError as moved:
                # An SSUBSCRIBE sent on a slot map older than the node's: only that slot's channels must move.
                self._moved(moved.slot_id)
                continue
            now = loop.time()
            if message is None:
                silence = now - last_heard
                if silence > 2 * SILENCE_BEFORE_PING:
                    raise TimeoutError(f"no reply from Redis for {silence:.1f}s")
                if silence > SILENCE_BEFORE_PING and not pinged:
                    await pubsub.ping()
                    pinged = True
                continue
            last_heard, pinged = now, False
            read += 1
            if read % YIELD_EVERY == 0:
                # Messages already buffered are read without the loop turning, and the flusher writes to clients
                # only when it turns: under a burst (a batch publish) clients would be evicted for a full queue.
                await asyncio.sleep(0)
            kind = message["type"]
            if kind == "smessage" or kind == "message":
                name = message["channel"].decode()
                channel = self._naming.channel_of(name)
                if channel is None:
                    self._bare_message(name, message["data"])
                elif (event := decode_pubsub(channel, message["data"])) is not None:
                    MESSAGES_IN.inc()
                    state = self._channels.get(channel)
                    if state is not None:
                        first = state.heard is None
                        if state.missed_before(event):
                            MISSED_LIVE.inc()
                            # The missed ones, and this one, from the buffer, in order; none newer than this one,
                            # whose publish may still be waiting for its replicas.
                            await self._catch_up(channel, event.stream_id)
                        elif first and not self._live_in_order and event.stream_id is not None:
                            await self._catch_up(channel, event.stream_id)  # it may have overtaken older ones
                    self._on_event(event)
            elif kind == "ssubscribe" or kind == "subscribe":
                name = message["channel"].decode()
                channel = self._naming.channel_of(name)
                bare = channel is None
                if bare:
                    channel = self._naming.channel_of_bare(name)
                state = self._channels.get(channel or "")
                if state is None or channel is None or (bare and state.bare != name):
                    continue
                state.awaiting.discard(name)
                if not bare and state.behind:
                    # Live again: fill what Pub/Sub dropped while the connection was down, before reading on, so
                    # that the channel's events still reach subscribers in order.
                    state.behind = False
                    await self._catch_up(channel, None)
                if not state.awaiting:
                    state.confirmed.set()
            elif kind == "sunsubscribe":
                channel = self._naming.channel_of(message["channel"].decode())
                state = self._channels.get(channel or "")
                if state is not None and channel is not None and state.sent:
                    # Not asked for (ours are sent after the state is gone): the slot moved, or a failover.
                    log.info("redis unsubscribed channel %s by itself; finding its node", channel)
                    state.sent, state.behind = False, True
                    if self._on_trouble is not None:
                        self._on_trouble(channel)

    def _bare_message(self, name: str, payload: bytes) -> None:
        """A message of a bare channel: streamed as data if this upstream holds its raw channel, else dropped."""
        channel = self._naming.channel_of_bare(name)
        state = self._channels.get(channel or "")
        # Only the upstream holding the channel passes its bare messages on: after a cluster handed the channel to
        # another node, the old node's copy of a message (a bare PUBLISH reaches every node) is not delivered twice.
        if channel is None or state is None or state.bare != name or self._bare is None:
            return
        if (event := self._bare.event(channel, payload)) is not None:
            MESSAGES_IN.inc()
            self._on_event(event)

    def _moved(self, slot: int) -> None:
        for channel, state in self._channels.items():
            if state.sent and key_slot(self._naming.pubsub_channel(channel).encode()) == slot:
                log.info("redis says channel %s is served elsewhere; finding its node", channel)
                state.sent, state.behind = False, True
                if self._on_trouble is not None:
                    self._on_trouble(channel)

    async def _catch_up(self, channel: str, until: StreamId | None) -> None:
        try:
            await self._on_resubscribed(channel, until)
        except (RedisError, OSError, RedisUnavailable):
            raise  # the connection is in trouble: reconnect, and catch up again
        except Exception:  # one channel's bad entry must not stop every channel's live delivery
            log.exception("catch-up of channel %s failed", channel)

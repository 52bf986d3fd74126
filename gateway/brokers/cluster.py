"""The broker for Redis Cluster: the replay buffer through redis-py's cluster client, sharded Pub/Sub per primary.

Publishing runs the script in the channel's slot (buffer key and shard channel share a hash tag) and SPUBLISHes, so
a message stays on its node instead of crossing the cluster bus to every node, as PUBLISH does.

Subscriptions are grouped by primary: one Upstream (one Pub/Sub connection, one reader) per primary that serves a
subscribed channel, not per channel or slot. redis-py's own cluster Pub/Sub polls the nodes in turn and does not
follow a slot that moves, so the topology is followed here. On a node's unsolicited ``sunsubscribe``, a failed
connection, and every ``CHECK_INTERVAL`` seconds, the slot map is refreshed and each channel whose slot another
primary serves now is handed to that primary's upstream, which subscribes and catches it up from its buffer (see
gateway.brokers.upstream). Clients keep their streams throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import MovedError

from gateway.brokers.bare import BareMessages
from gateway.brokers.buffer import PUBLISH_SCRIPT, RedisBuffer
from gateway.brokers.connections import REDIS_FAILURES, connect, without_maintenance_notifications
from gateway.brokers.protocol import OnCatchUp, OnEvent
from gateway.brokers.upstream import Upstream
from gateway.config import REDIS_SOCKET_TIMEOUT, Settings
from gateway.errors import GatewayError, RedisUnavailable
from gateway.metrics import CLUSTER_NODE_UP, RESUBSCRIPTIONS, TOPOLOGY_REFRESHES
from gateway.tasks import stop_task, stop_tasks

log = logging.getLogger("gateway.brokers.cluster")

CHECK_INTERVAL = 5.0  # a failover that pushed nothing (the subscription just went quiet) is found within this
RETRY_INTERVAL = 0.5  # while the slot map cannot be read or a slot has no reachable primary


def seed_urls(redis_url: str) -> list[str]:
    return [url.strip() for url in redis_url.split(",") if url.strip()]


class ClusterBroker(RedisBuffer):
    def __init__(self, settings: Settings) -> None:
        if settings.redis_url is None:
            raise ValueError("a broker needs settings.redis_url")
        self._seeds = seed_urls(settings.redis_url)
        first = urlsplit(self._seeds[0])
        client = RedisCluster(
            startup_nodes=[ClusterNode(urlsplit(url).hostname, urlsplit(url).port or 6379) for url in self._seeds],
            username=first.username,
            password=first.password,
            ssl=first.scheme == "rediss",
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=2,
            socket_keepalive=True,
            **without_maintenance_notifications(),
        )
        super().__init__(client, settings, publish_command="SPUBLISH")
        self._upstreams: dict[str, Upstream] = {}  # by node name, "host:port"
        self._primaries: dict[str, aioredis.Redis] = {}  # one node's own client, for a write and its WAIT
        self._on_event: OnEvent | None = None
        self._on_catch_up: OnCatchUp | None = None
        self._check_now = asyncio.Event()
        self._checker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._retired: set[Upstream] = set()  # upstreams of nodes no longer needed, while they stop
        self._unowned = False  # a subscribed channel's slot had no reachable primary at the last check
        self._bare = BareMessages(settings.max_body_bytes)

    async def start(self, on_event: OnEvent, on_catch_up: OnCatchUp) -> None:
        self._on_event, self._on_catch_up = on_event, on_catch_up
        try:
            await self.client.initialize()
        except REDIS_FAILURES as exc:
            raise RedisUnavailable(f"no Redis Cluster node answers at {', '.join(self._seeds)} ({exc})") from exc
        self._checker = asyncio.create_task(self._check_topology(), name="gateway-cluster-topology")

    def subscribe(self, channel: str) -> asyncio.Event:
        try:
            upstream = self._holder(channel) or self._upstream_for(channel)
        except REDIS_FAILURES as exc:  # the slot map has no primary for its slot now
            raise RedisUnavailable(f"no reachable Redis node serves channel {channel} ({exc})") from exc
        return upstream.subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        upstream = self._holder(channel)
        if upstream is not None:
            upstream.unsubscribe(channel)

    @property
    def live(self) -> bool:
        return not self._unowned and all(
            upstream.connected.is_set() for upstream in self._upstreams.values() if upstream.channels
        )

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping(target_nodes=RedisCluster.PRIMARIES))
        except REDIS_FAILURES:
            return False

    async def close(self) -> None:
        await self._close_pipelines()
        await stop_task(self._checker)
        await stop_tasks(list(self._tasks))  # starts, and stops of retired upstreams, cut short: stopped again below
        await asyncio.gather(*(upstream.stop() for upstream in [*self._upstreams.values(), *self._retired]))
        for client in self._primaries.values():
            await client.aclose()
        await self.client.aclose()

    async def publish(self, channel: str, data: str, event_type: str | None = None) -> str:
        try:
            return await super().publish(channel, data, event_type)
        except RedisUnavailable:
            self._check_now.set()  # its primary may be gone: the subscriptions of its slots must move as soon
            raise

    async def publish_many(self, events: Sequence[tuple[str, str, str | None]]) -> list[str | GatewayError]:
        outcomes = await super().publish_many(events)
        if any(isinstance(outcome, RedisUnavailable) for outcome in outcomes):
            self._check_now.set()  # as for a single publish: a primary may be gone
        return outcomes

    async def _publish_replicated(self, keys: list[str], args: list[Any], event_type: str | None, data: str) -> str:
        try:
            return await super()._publish_replicated(keys, args, event_type, data)
        except MovedError:
            # The slot moved since the map was read: read it again, and write to the new primary once.
            await self.client.nodes_manager.initialize()
            return await super()._publish_replicated(keys, args, event_type, data)

    async def _node_of(self, key: str) -> Any:
        """The primary of ``key``'s slot in the slot map (read first if it never was: a publish needs no start())."""
        await self.client.initialize()  # returns at once once done
        return self.client.get_node_from_key(key)

    async def _evalsha(self, keys: list[str], args: list[Any]) -> Any:
        # Aimed at the key's node: redis-py's cluster client then retries no connection failure (it would otherwise,
        # and a write whose answer was lost would be stored twice), and still follows a MOVED to the slot's new node.
        node = await self._node_of(keys[0])
        return await self.client.execute_command(
            "EVALSHA", self._publish.sha, len(keys), *keys, *args, target_nodes=node
        )

    async def _load_publish_script(self, key: str) -> None:
        # On the key's primary only: redis-py's own reload goes to every primary and fails while any one is down.
        node = await self._node_of(key)
        await self.client.execute_command("SCRIPT", "LOAD", PUBLISH_SCRIPT, target_nodes=node)

    async def pipeline_route(self, key: str) -> tuple[str, Any]:
        # One pipeline per primary, through that node's own client: a pipeline of the cluster client would retry
        # a failed round trip, and a write whose answer was lost would be stored twice.
        node = await self._node_of(key)
        return node.name, await self._primary_for(key)

    async def _primary_for(self, key: str) -> aioredis.Redis:
        node = await self._node_of(key)
        client = self._primaries.get(node.name)
        if client is None:
            client = self._primaries[node.name] = connect(self._node_url(node.host, node.port), max_connections=16)
        return client

    # -- the topology ---------------------------------------------------------------------------------------------

    def _holder(self, channel: str) -> Upstream | None:
        return next((upstream for upstream in self._upstreams.values() if upstream.holds(channel)), None)

    def _upstream_for(self, channel: str) -> Upstream:
        """The upstream of the primary that serves the channel's slot in the slot map as last read."""
        node = self.client.get_node_from_key(self.naming.pubsub_channel(channel))
        upstream = self._upstreams.get(node.name)
        if upstream is None:
            assert self._on_event is not None and self._on_catch_up is not None, "start() first"
            upstream = Upstream(
                self._node_url(node.host, node.port),
                self.naming,
                self._on_event,
                self._on_catch_up,
                sharded=True,
                live_in_order=not self.replicas,
                on_trouble=self._trouble,
                bare=self._bare,
            )
            self._upstreams[node.name] = upstream
            CLUSTER_NODE_UP.labels(node.name).set(0)
            self._background(upstream.start())
        return upstream

    def _background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held, or the loop might drop it half-way
        task.add_done_callback(self._tasks.discard)

    async def _retire(self, upstream: Upstream) -> None:
        await upstream.stop()
        self._retired.discard(upstream)

    def _node_url(self, host: str, port: int) -> str:
        # The seed's scheme and credentials, with the node's address.
        seed = urlsplit(self._seeds[0])
        credentials = seed.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
        return urlunsplit((seed.scheme, netloc, "", "", ""))

    def _trouble(self, channel: str | None) -> None:
        self._check_now.set()

    async def _check_topology(self) -> None:
        while True:
            interval = RETRY_INTERVAL if self._unowned or not self.live else CHECK_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), interval)
            self._check_now.clear()
            try:
                await self.client.nodes_manager.initialize()
            except REDIS_FAILURES as exc:
                log.warning("cannot read the cluster's slot map (%s); trying again", exc)
                self._unowned = True
                continue
            TOPOLOGY_REFRESHES.inc()
            try:
                self._follow_slots()
            except Exception:  # a bug here must not end the following of the topology for good
                log.exception("following the cluster's slots failed; trying again")
                self._unowned = True

    def _follow_slots(self) -> None:
        """Hand every channel to the upstream of its slot's primary now; subscribe again where a node dropped it."""
        unowned = False
        for name, upstream in list(self._upstreams.items()):
            CLUSTER_NODE_UP.labels(name).set(1 if upstream.connected.is_set() else 0)
            for channel in [*upstream.channels, *upstream.unsent()]:
                try:
                    owner = self._upstream_for(channel)
                except REDIS_FAILURES:  # redis-py's "slot not covered": no primary for it; try again soon
                    unowned = True
                    continue
                if owner is upstream:
                    if channel in upstream.unsent():
                        RESUBSCRIPTIONS.inc()
                        upstream.resubscribe(channel)
                elif (state := upstream.release(channel)) is not None:
                    log.info("channel %s moved from %s; subscribing on its new primary", channel, name)
                    RESUBSCRIPTIONS.inc()
                    owner.adopt(channel, state)
        self._unowned = unowned
        for name, upstream in list(self._upstreams.items()):
            if not upstream.channels and not upstream.unsent():
                # No channel left on that node (its slots moved, or it is a replica now): close its connection.
                del self._upstreams[name]
                with contextlib.suppress(KeyError):
                    CLUSTER_NODE_UP.remove(name)
                self._retired.add(upstream)
                self._background(self._retire(upstream))

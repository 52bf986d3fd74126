"""The broker for one Redis server: the replay buffer (gateway.brokers.buffer) and one Pub/Sub connection.

See gateway.brokers.protocol for what each method promises, and gateway.brokers.upstream for the subscriptions.
"""

from __future__ import annotations

import asyncio

from gateway.brokers.bare import BareMessages
from gateway.brokers.buffer import PUBLISH_SCRIPT, RedisBuffer
from gateway.brokers.connections import REDIS_FAILURES, connect
from gateway.brokers.protocol import OnCatchUp, OnEvent
from gateway.brokers.upstream import Upstream
from gateway.config import Settings

__all__ = ["PUBLISH_SCRIPT", "SingleNodeBroker"]


class SingleNodeBroker(RedisBuffer):
    def __init__(self, settings: Settings) -> None:
        if settings.redis_url is None:
            raise ValueError("a broker needs settings.redis_url")
        self.url = settings.redis_url
        super().__init__(connect(self.url), settings)
        self.upstream: Upstream | None = None
        self.bare = BareMessages(settings.max_body_bytes)

    async def start(self, on_event: OnEvent, on_catch_up: OnCatchUp) -> None:
        self.upstream = Upstream(
            self.url, self.naming, on_event, on_catch_up, live_in_order=not self.replicas, bare=self.bare
        )
        await self.upstream.start()

    def subscribe(self, channel: str) -> asyncio.Event:
        assert self.upstream is not None, "start() first"
        return self.upstream.subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        if self.upstream is not None:
            self.upstream.unsubscribe(channel)

    @property
    def live(self) -> bool:
        return self.upstream is not None and self.upstream.connected.is_set()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except REDIS_FAILURES:
            return False

    async def close(self) -> None:
        await self._close_pipelines()
        if self.upstream is not None:
            await self.upstream.stop()
        await self.client.aclose()

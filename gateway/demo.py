"""The simulated publisher behind `sse-gateway demo`: stock prices several times a second and a slower news feed."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

from gateway.brokers.protocol import Broker
from gateway.errors import GatewayError
from gateway.tasks import stop_tasks

log = logging.getLogger("gateway.demo")

OPENING_PRICES = {"AAPL": 189.20, "MSFT": 415.10, "GOOG": 171.40, "AMZN": 182.75, "TSLA": 242.60}
HEADLINES = [
    "Chipmakers rally as demand outlook brightens",
    "Central bank holds rates, signals patience",
    "Retail sales beat forecasts for a third month",
    "Oil slips as inventories build",
    "Tech earnings week opens with cloud growth in focus",
    "Bond yields ease after soft inflation print",
    "EV deliveries climb on new model launch",
    "Analysts lift targets on strong ad revenue",
]
PRICE_INTERVAL = 0.1  # seconds between price ticks (one ticker moves per tick)
NEWS_INTERVAL = 4.0


class DemoPublisher:
    def __init__(self, broker: Broker, *, seed: int | None = None) -> None:
        self.broker = broker
        self.random = random.Random(seed)
        self.prices = dict(OPENING_PRICES)
        self._tasks: list[asyncio.Task[None]] = []
        # Checked by both loops, so they end even if a cancellation is lost in a publish (see gateway.tasks).
        self._stopping = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._prices()), asyncio.create_task(self._news())]

    async def stop(self) -> None:
        self._stopping = True
        await stop_tasks(self._tasks)

    def next_price(self) -> dict[str, object]:
        symbol = self.random.choice(list(self.prices))
        price = max(1.0, self.prices[symbol] * (1 + self.random.gauss(0, 0.0015)))
        self.prices[symbol] = price
        change = price - OPENING_PRICES[symbol]
        return {"symbol": symbol, "price": round(price, 2), "change": round(change, 2), "time": _now_ms()}

    async def _prices(self) -> None:
        while not self._stopping:
            await self._publish("stocks", self.next_price())
            await asyncio.sleep(PRICE_INTERVAL)

    async def _news(self) -> None:
        headlines = self.random.sample(HEADLINES, len(HEADLINES))
        for index in range(3):  # a few at once, so a fresh page has something to show
            await self._publish("news", {"headline": headlines[index], "time": _now_ms()})
            await asyncio.sleep(0.5)
        while not self._stopping:
            await asyncio.sleep(NEWS_INTERVAL)
            await self._publish("news", {"headline": self.random.choice(HEADLINES), "time": _now_ms()})

    async def _publish(self, channel: str, body: dict[str, object]) -> None:
        try:
            await self.broker.publish(channel, json.dumps(body, separators=(",", ":")))
        except GatewayError as exc:  # Redis blipped: the demo carries on with the next tick
            log.warning("demo publish failed: %s", exc.detail)


def _now_ms() -> int:
    return int(time.time() * 1000)

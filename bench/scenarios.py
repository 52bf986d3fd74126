"""The scenarios (a)–(f), and the extra paces of (c) that the latency plot needs, at full size or scaled down."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

# Connection i of a multi-channel scenario takes channels i+0, i+1, i+3, i+7 (mod the channel count): 16 different
# sets over 16 channels, each channel with the same number of subscribers.
MULTI_OFFSETS = (0, 1, 3, 7)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    clients: int  # connections (for a replay: resumes, one after another)
    channels: int = 1
    per_connection: int = 1  # channels on each connection
    messages: int = 0  # per channel
    rate: float = 0.0  # messages per second per channel; 0 publishes as fast as the server answers
    replay_behind: int = 0  # a replay: how many events each resuming client is behind
    plot: bool = False  # a point of the latency-against-load plot
    loadgen_processes: int = 1

    @property
    def replay(self) -> bool:
        return self.replay_behind > 0

    @property
    def offered_load(self) -> float:
        """Deliveries per second the publisher asks for (paced scenarios only)."""
        return self.clients * self.per_connection * self.rate

    @property
    def expected_deliveries(self) -> int:
        if self.replay:
            return self.clients * self.replay_behind
        return self.clients * self.per_connection * self.messages

    def channel_sets(self) -> Counter[tuple[int, ...]]:
        """How many connections subscribe to each set of channel indexes."""
        sets: Counter[tuple[int, ...]] = Counter()
        for i in range(self.clients):
            offsets = MULTI_OFFSETS[: self.per_connection] if self.per_connection > 1 else (0,)
            sets[tuple(sorted({(i + o) % self.channels for o in offsets}))] += 1
        return sets


def full() -> list[Scenario]:
    return [
        Scenario("a", "burst: 1000 clients x 400 messages", 1000, messages=400),
        Scenario("b", "10,000 clients x 30 messages (burst)", 10_000, messages=30),
        Scenario("c", "paced: 2000 clients x 20 msg/s for 10 s", 2000, messages=200, rate=20, plot=True),
        Scenario("d", "100 channels x 100 clients, 4 msg/s per channel for 5 s", 10_000, 100, messages=20, rate=4),
        Scenario("e", "replay: a client resuming 1000 events behind (x100, one after another)", 100,
                 replay_behind=1000),
        Scenario("f", "multi-channel: 1000 clients x 4 of 16 channels, 10 msg/s per channel for 5 s", 1000, 16, 4,
                 messages=50, rate=10),
        Scenario("c5", "paced: 2000 clients x 5 msg/s for 6 s", 2000, messages=30, rate=5, plot=True),
        Scenario("c10", "paced: 2000 clients x 10 msg/s for 6 s", 2000, messages=60, rate=10, plot=True),
        Scenario("c40", "paced: 2000 clients x 40 msg/s for 6 s", 2000, messages=240, rate=40, plot=True),
    ]  # fmt: skip


def quick() -> list[Scenario]:
    return [
        Scenario("a", "burst: 100 clients x 40 messages", 100, messages=40),
        Scenario("b", "1000 clients x 30 messages (burst)", 1000, messages=30),
        Scenario("c", "paced: 200 clients x 20 msg/s for 2 s", 200, messages=40, rate=20, plot=True),
        Scenario("d", "10 channels x 10 clients, 5 msg/s per channel for 2 s", 100, 10, messages=10, rate=5),
        Scenario("e", "replay: a client resuming 100 events behind (x20, one after another)", 20, replay_behind=100),
        Scenario("f", "multi-channel: 100 clients x 4 of 16 channels, 10 msg/s for 1 s", 100, 16, 4, messages=10,
                 rate=10),
        Scenario("c40", "paced: 200 clients x 40 msg/s for 2 s", 200, messages=80, rate=40, plot=True),
    ]  # fmt: skip


def select(scenarios: list[Scenario], only: str | None) -> list[Scenario]:
    """The scenarios named in ``only`` (``a,c``); ``c`` also brings the other paces of (c), for the plot."""
    if not only:
        return scenarios
    wanted = {key.strip() for key in only.split(",") if key.strip()}
    unknown = wanted - {s.key for s in scenarios}
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return [s for s in scenarios if s.key in wanted or (s.key.startswith("c") and "c" in wanted)]

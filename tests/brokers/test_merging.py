"""Queued publishes of one channel go as one script call (gateway.brokers.merging), each still with its own id."""

from __future__ import annotations

import asyncio
import uuid

from gateway.brokers import broker_for
from gateway.brokers.batch import EVENTS_PER_CALL
from gateway.brokers.merging import BYTES_PER_CALL, merge, split
from gateway.config import Settings


def single(channel: str, data: str, event_type: str = "") -> tuple[list[str], list[object]]:
    return [f"sse:{{{channel}}}:buffer", f"sse:{{{channel}}}"], [1000, 0, event_type, data, 86400000, "PUBLISH"]


def test_the_calls_of_one_channel_become_one_call_carrying_their_events_in_order():
    calls = [single("a", "1"), single("b", "2", "tick"), single("a", "3", "tick"), single("a", "4"), single("b", "5")]
    merged = merge(calls)
    assert [indexes for _, indexes in merged] == [[0, 2, 3], [1, 4]]
    (keys_a, args_a), _ = merged[0]
    assert keys_a == calls[0][0]
    assert args_a == [1000, 0, "", "1", 86400000, "PUBLISH", "tick", "3", "", "4"], "publish.lua's batch form"
    assert calls[0][1] == [1000, 0, "", "1", 86400000, "PUBLISH"], "the callers' own arguments are left as they were"


def test_calls_with_other_limits_or_already_batched_are_not_merged_and_the_channel_keeps_its_order():
    other_limits = single("a", "2")
    other_limits[1][0] = 10  # another maxlen: not the same script call
    batched = single("a", "3")
    batched[1].extend(["", "4"])
    merged = merge([single("a", "1"), other_limits, batched, single("a", "5")])
    assert [indexes for _, indexes in merged] == [[0], [1], [2], [3]], "5 is stored after 2, 3 and 4, not with 1"
    merged = merge([single("a", "1"), single("b", "2"), single("a", "3"), batched, single("a", "5"), single("a", "6")])
    assert [indexes for _, indexes in merged] == [[0, 2], [1], [3], [4, 5]]


def test_a_merged_call_is_cut_at_the_event_and_byte_limits_and_the_rest_follows_it():
    many = merge([single("a", str(n)) for n in range(EVENTS_PER_CALL + 3)])
    assert [len(indexes) for _, indexes in many] == [EVENTS_PER_CALL, 3]
    assert many[1][1][0] == EVENTS_PER_CALL, "the rest comes after, in the same order"
    half = "x" * (BYTES_PER_CALL // 2)
    big = merge([single("a", half), single("a", half), single("a", half)])
    assert [indexes for _, indexes in big] == [[0, 1], [2]]


def test_split_gives_each_caller_its_own_id_and_a_failed_call_fails_each_of_its_callers():
    calls = [single("a", "1"), single("b", "2"), single("a", "3"), single("c", "4"), single("c", "5")]
    merged = merge(calls)
    failure = ConnectionError("lost")
    results = split(merged, [[b"1-0", b"1-1"], b"2-0", failure], len(calls))
    assert results == [b"1-0", b"2-0", b"1-1", failure, failure]


def evalsha_calls(raw) -> int:
    return raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


async def publish_concurrently(raw, url: str, merged: bool, calls: list[tuple[str, str]]) -> tuple[list[str], int]:
    """The ids the callers got, and how many script calls Redis ran for them."""
    broker = broker_for(Settings(redis_url=url, redis_cluster="off", publish_merge=merged))
    try:
        before = evalsha_calls(raw)
        ids = await asyncio.gather(*(broker.publish(channel, data) for channel, data in calls))
        return ids, evalsha_calls(raw) - before
    finally:
        await broker.close()


async def test_concurrent_publishes_of_a_channel_are_stored_by_few_script_calls_in_call_order(own_redis):
    raw = own_redis.client()
    base = "mg-" + uuid.uuid4().hex[:8]
    calls = [(f"{base}-{n % 2}", f"event {n}") for n in range(300)]
    ids, scripts = await publish_concurrently(raw, own_redis.url, True, calls)
    for channel in {c for c, _ in calls}:
        stored = [(e.decode(), f[b"d"].decode()) for e, f in raw.xrange(f"sse:{{{channel}}}:buffer")]
        assert stored == [(i, d) for i, (c, d) in zip(ids, calls, strict=True) if c == channel]
    assert len({(c, i) for (c, _), i in zip(calls, ids, strict=True)}) == len(calls), "an id each"
    assert scripts <= 4, f"{scripts} script calls for 300 publishes on two channels"
    _, unmerged = await publish_concurrently(raw, own_redis.url, False, calls)
    assert unmerged >= len(calls), "switched off, one script call each"

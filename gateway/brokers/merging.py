"""Single publishes of one channel that queued for the same round trip (gateway.brokers.pipeline) go to Redis as one
call of the publish script in its batch form, as a batch publish does (gateway.brokers.batch).

Each caller still gets its own id; the calls carried by one script call share its fate (a Redis error, a slot that
moved), as they would have had each their own. The events of a channel keep the order of their calls: they are
appended to the script call in that order, and a call cut at ``EVENTS_PER_CALL`` or ``BYTES_PER_CALL`` is followed in
the same pipeline by the one carrying the rest.

Why: 16 publishers on one channel queue about 15 publishes for each round trip, and as 15 EVALSHAs they cost 15
times redis-py's packing and parsing of a command and Redis's start of a script, its read of the previous id and its
expiry. Measured by ``python -m bench.publish --rounds 3 --variant unmerged:SSE_GATEWAY_PUBLISH_MERGE=0`` (wrk, 16
connections, one channel, one gateway process, 2026-12-07, bench/results/20261207-publish-ab.txt): 95.3 µs of
gateway CPU and 22.4 µs of Redis CPU per publish unmerged, 80.7 µs and 12.9 µs merged, and 10,142 against 12,219
publishes a second. ``SSE_GATEWAY_PUBLISH_MERGE=0`` switches it off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.brokers.batch import EVENTS_PER_CALL, Pending  # a script call and the indexes of the calls it carries

if TYPE_CHECKING:
    from gateway.brokers.buffer import ScriptCall

BYTES_PER_CALL = 1 << 20  # the data of one script call (in characters), so that merging never makes a script run long
SINGLE_EVENT_ARGS = 6  # maxlen, max age, type, data, idle expiry, mode (publish.lua)


def merge(calls: list[ScriptCall]) -> list[Pending]:
    """The script calls that carry ``calls``: those of one channel (and the same limits) merged, in order."""
    merged: list[Pending] = []
    # By channel (its keys): the call still taking its events, what it was made for, and its data so far.
    open_call: dict[tuple[str, ...], tuple[int, tuple[Any, ...], int]] = {}
    for n, (keys, args) in enumerate(calls):
        channel = tuple(keys)
        if len(args) != SINGLE_EVENT_ARGS:
            open_call.pop(channel, None)  # already a batch: it goes as it is, and the channel's later events after it
            merged.append(((keys, args), [n]))
            continue
        limits = (*args[:2], *args[4:])
        size = len(args[3])
        if channel in open_call:
            at, its_limits, taken = open_call[channel]
            (_, merged_args), indexes = merged[at]
            if its_limits == limits and len(indexes) < EVENTS_PER_CALL and taken + size <= BYTES_PER_CALL:
                merged_args += [args[2], args[3]]
                indexes.append(n)
                open_call[channel] = at, limits, taken + size
                continue
        open_call[channel] = len(merged), limits, size
        merged.append(((keys, list(args)), [n]))
    return merged


def split(merged: list[Pending], results: list[Any], count: int) -> list[Any]:
    """One result per original call, in order, from the result of each merged call."""
    out: list[Any] = [None] * count
    for (_, indexes), result in zip(merged, results, strict=True):
        if len(indexes) == 1:
            out[indexes[0]] = result
        elif isinstance(result, BaseException):
            for n in indexes:
                out[n] = result
        else:
            for n, stream_id in zip(indexes, result, strict=True):
                out[n] = stream_id
    return out

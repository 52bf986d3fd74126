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

from gateway.brokers.batch import EVENTS_PER_CALL

if TYPE_CHECKING:
    from gateway.brokers.buffer import ScriptCall

BYTES_PER_CALL = 1 << 20  # the data of one script call, so that merging never makes one script run long
SINGLE_EVENT_ARGS = 6  # maxlen, max age, type, data, idle expiry, mode (publish.lua)

Merged = tuple["ScriptCall", list[int]]  # a script call and the indexes of the calls it carries


def merge(calls: list[ScriptCall]) -> list[Merged]:
    """The script calls that carry ``calls``: those of one channel (and the same limits) merged, in order."""
    merged: list[Merged] = []
    open_call: dict[tuple[Any, ...], tuple[int, int]] = {}  # the call still taking events, and its data size
    for n, (keys, args) in enumerate(calls):
        if len(args) != SINGLE_EVENT_ARGS:
            merged.append(((keys, args), [n]))  # already a batch: it goes as it is
            continue
        group = (*keys, *args[:2], *args[4:])
        size = len(args[3])
        if group in open_call:
            at, taken = open_call[group]
            (_, merged_args), indexes = merged[at]
            if len(indexes) < EVENTS_PER_CALL and taken + size <= BYTES_PER_CALL:
                merged_args += [args[2], args[3]]
                indexes.append(n)
                open_call[group] = at, taken + size
                continue
        open_call[group] = len(merged), size
        merged.append(((keys, list(args)), [n]))
    return merged


def split(merged: list[Merged], results: list[Any], count: int) -> list[Any]:
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

"""Events as Redis holds them: the Pub/Sub envelope and the replay-buffer entry. No other module reads their fields.

The publish script (publish.lua) appends an entry with fields ``p`` (the id before it, empty for the first), ``e``
(event type, empty for none) and ``d`` (data), then publishes an envelope carrying the same::

    \\x00sse2\\n<stream id>\\n<previous id or empty>\\n<event type or empty>\\n<data>

``sse1`` envelopes (no previous id), from earlier gateways, are still read. Any other Pub/Sub payload is a plain
``PUBLISH`` from another program: it is streamed as data with no id, since it is not in the replay buffer. On a bare
channel (gateway.brokers.bare) every payload is such data, an envelope too: no other program can give an event an id.

Nothing read from Redis can break a stream: bytes that are not UTF-8 are replaced.
"""

from __future__ import annotations

import logging

from gateway.cursor import ZERO, StreamId, parse_stream_id
from gateway.events import Event

log = logging.getLogger("gateway.brokers.envelope")

ENVELOPE_MARK = b"\x00sse2\n"
ENVELOPE_MARK_V1 = b"\x00sse1\n"  # no previous id

Entry = tuple[bytes, dict[bytes, bytes]]


def encode_pubsub(stream_id: bytes, previous: bytes, event_type: str | None, data: str) -> bytes:
    """The envelope of a buffered event, as the publish script sends it (for a publish that sends it live itself)."""
    return ENVELOPE_MARK + b"\n".join([stream_id, previous, (event_type or "").encode(), data.encode()])


def decode_pubsub(channel: str, payload: bytes) -> Event | None:
    """An Event from a Pub/Sub payload: an envelope from the publish script, or a plain message.

    None for a damaged envelope, which is neither: it is logged and skipped.
    """
    if payload.startswith(ENVELOPE_MARK):
        head, _, rest = payload[len(ENVELOPE_MARK) :].partition(b"\n")
        before, _, rest = rest.partition(b"\n")
    elif payload.startswith(ENVELOPE_MARK_V1):
        head, _, rest = payload[len(ENVELOPE_MARK_V1) :].partition(b"\n")
        before = None
    else:
        return Event(channel, None, None, _text(payload))
    event_type, _, data = rest.partition(b"\n")
    try:
        stream_id = parse_stream_id(head.decode())
        previous = None if before is None else _previous(before)
    except ValueError:
        log.warning("skipped a damaged envelope on channel %s", channel)
        return None
    return Event(channel, stream_id, _text(event_type) or None, _text(data), previous)


def decode_bare(channel: str, payload: bytes) -> Event:
    """An Event from a bare channel's payload: data only, whatever it holds; never an envelope, which forges an id."""
    return Event(channel, None, None, _text(payload))


def from_stream_entry(channel: str, entry: Entry) -> Event:
    """An Event from a replay-buffer entry; a missing ``p`` counts as the first entry of its stream."""
    entry_id, fields = entry
    return Event(
        channel,
        parse_stream_id(entry_id.decode()),
        _text(fields.get(b"e", b"")) or None,
        _text(fields.get(b"d", b"")),
        _previous(fields.get(b"p", b"")),
    )


def _previous(raw: bytes) -> StreamId:
    return parse_stream_id(raw.decode()) if raw else ZERO


def _text(raw: bytes) -> str:
    # Published data is UTF-8; a plain PUBLISH from elsewhere may not be, and must not break the stream.
    return raw.decode("utf-8", errors="replace")

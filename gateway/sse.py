"""Pure text/event-stream framing: events and comments to bytes. No I/O.

Lines end with LF only. Data is split on CRLF, LF and lone CR (never ``str.splitlines``, which would also break
on U+2028, U+0085, VT and FF and corrupt the payload), one ``data:`` line each, so no payload can forge a field.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")
MAX_EVENT_TYPE_LENGTH = 128
# The event that tells a client that asks for it (?start_event=1) where its stream starts: its id is the starting
# position, which EventSource otherwise keeps to itself. No channel name begins with ":", so in a stream of several
# channels no event is called this either.
START_EVENT = ":start"
# The gateway's own in-band events; a publisher may not imitate them.
RESERVED_EVENT_TYPES = frozenset({"gap", START_EVENT})


def event_type_problem(event: str) -> str | None:
    """Why ``event`` cannot be an SSE event type, or None if it can."""
    if not event:
        return "event type must not be empty"
    if len(event) > MAX_EVENT_TYPE_LENGTH:
        return f"event type must be at most {MAX_EVENT_TYPE_LENGTH} characters"
    if _FORBIDDEN_IN_FIELD.search(event):
        return "event type must not contain CR, LF or NUL"
    if event in RESERVED_EVENT_TYPES:
        return f"event type {event!r} is reserved for the gateway's own events"
    if not event.isprintable() and any("\ud800" <= c <= "\udfff" for c in event):
        return "event type must be valid Unicode text"
    return None


def data_lines(data: str) -> bytes:
    """The ``data:`` lines of an event, each ending in LF (at least one, so empty data still dispatches)."""
    return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data)).encode()


def encode_event(data: str, *, event: str | None = None, event_id: str | None = None) -> bytes:
    """One complete event frame, ending in the blank line that dispatches it."""
    head = ""
    if event_id is not None:
        _check_field("id", event_id)
        head += f"id: {event_id}\n"
    if event is not None:
        _check_field("event", event)
        head += f"event: {event}\n"
    return head.encode() + data_lines(data) + b"\n"


def encode_comment(text: str) -> bytes:
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode()


def encode_retry(milliseconds: int) -> bytes:
    return f"retry: {int(milliseconds)}\n\n".encode()


def _check_field(name: str, value: str) -> None:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"{name} must not contain CR, LF or NUL: {value!r}")

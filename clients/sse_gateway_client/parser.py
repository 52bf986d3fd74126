"""Incremental text/event-stream parser, following the WHATWG HTML "server-sent events" interpretation rules."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["SSEParser", "ServerSentEvent"]

# Only CRLF, LF and lone CR end a line. str.splitlines() would also split on U+2028, U+0085, \v and \f.
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    `id` is the stream's last event id *after* this event, as a browser's `MessageEvent.lastEventId` reports it:
    an event without an `id:` field inherits the previous one.
    `retry` is the reconnection time (ms) announced inside this event's block, if any.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEParser:
    """Turn a byte stream into `ServerSentEvent`s, chunk by chunk.

    `last_event_id` and `retry` survive `reset()`, which a client calls before parsing a new connection's body.
    """

    def __init__(self, last_event_id: str = "") -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new stream: pending bytes and any incomplete event are discarded."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True
        self._after_cr = False
        self._partial: list[str] = []
        self._data: list[str] = []
        self._event = ""
        self._event_retry: int | None = None
        # Browsers seed a new connection's id buffer with the current last event id rather than "", otherwise the
        # first id-less event after a reconnect would wipe the resume point.
        self._id_buffer = self.last_event_id

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse the next bytes of the stream and return the events they complete."""
        return self._feed_text(self._decoder.decode(chunk))

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if self._at_start and text:
            self._at_start = False
            if text[0] == "\ufeff":
                text = text[1:]
        if self._after_cr and text:
            # The CR already ended a line; an LF right after it, even in the next chunk, belongs to that ending.
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return []

        events: list[ServerSentEvent] = []
        start = 0
        for match in _LINE_END.finditer(text):
            line = text[start : match.start()]
            if self._partial:
                self._partial.append(line)
                line = "".join(self._partial)
                self._partial.clear()
            self._process_line(line, events)
            start = match.end()
        if start < len(text):
            self._partial.append(text[start:])
        self._after_cr = text[-1] == "\r"
        return events

    def _process_line(self, line: str, events: list[ServerSentEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]

        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._event_retry = self.retry = int(value)

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        # The id is committed before the empty-data check: an id-only block still moves the resume point.
        self.last_event_id = self._id_buffer
        if self._data:
            events.append(
                ServerSentEvent(
                    data="\n".join(self._data),
                    event=self._event or "message",
                    id=self.last_event_id,
                    retry=self._event_retry,
                )
            )
        self._data = []
        self._event = ""
        self._event_retry = None

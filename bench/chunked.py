"""HTTP/1.1 chunked transfer coding undone as the bytes arrive, for the raw-socket clients (uvicorn sends chunked;
nginx sends a plain close-delimited body)."""

from __future__ import annotations


class Dechunker:
    """Feed it what a socket read gave; it returns the body bytes those held. ``ended`` once the last chunk came."""

    __slots__ = ("raw", "chunk_left", "crlf_left", "ended")

    def __init__(self) -> None:
        self.raw = b""
        self.chunk_left = 0
        self.crlf_left = 0
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        raw = self.raw + data if self.raw else data
        out = []
        pos, size = 0, len(raw)
        while pos < size:
            if self.chunk_left:
                take = min(self.chunk_left, size - pos)
                out.append(raw[pos : pos + take])
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.crlf_left = 2
            elif self.crlf_left:
                skip = min(self.crlf_left, size - pos)
                pos += skip
                self.crlf_left -= skip
            else:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                self.chunk_left = int(raw[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if not self.chunk_left:
                    self.ended = True  # the last chunk: the server ended the stream
                    pos = size
        self.raw = raw[pos:]
        return out[0] if len(out) == 1 else b"".join(out)

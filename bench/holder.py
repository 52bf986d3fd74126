"""SSE streams held open for a benchmark: ``python -m bench.holder PORT PATH COUNT [--count]``.

Opens COUNT streams of PATH on 127.0.0.1:PORT, prints ``open COUNT`` once every one has its response head, then
reads and drops what arrives. With ``--count`` it also prints ``events N`` as the number of events received on the
streams grows (an ``id:`` line each, the opening one not counted). Runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Stream(asyncio.Protocol):
    def __init__(self, opened: asyncio.Future[None], counts: list[int]) -> None:
        self.opened, self.counts = opened, counts
        self.head = b""
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.opened.set_result(None)
                data = self.head.split(b"\r\n\r\n", 1)[1]
            else:
                return
        text = self.tail + data
        self.counts[0] += text.count(b"\nid: ") + text.startswith(b"id: ")
        self.tail = text[-4:]  # an "\nid: " split over two reads is counted once


async def main(port: int, path: str, count: int, counting: bool) -> None:
    loop = asyncio.get_running_loop()
    counts = [0]
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    openings = []
    for start in range(0, count, 500):  # 500 at a time: the listen backlog is finite
        batch = []
        for _ in range(min(500, count - start)):
            opened: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(lambda o=opened: Stream(o, counts), "127.0.0.1", port)
            transport.write(request)
            batch.append(opened)
        await asyncio.gather(*batch)
        openings += batch
    print(f"open {len(openings)}", flush=True)
    opening_ids = count  # each stream's opening carries its start id
    last = None
    while True:
        await asyncio.sleep(0.2)
        if counting and counts[0] != last:
            last = counts[0]
            print(f"events {max(0, last - opening_ids)}", flush=True)


if __name__ == "__main__":
    uvloop.install()
    arguments = sys.argv[1:]
    asyncio.run(main(int(arguments[0]), arguments[1], int(arguments[2]), "--count" in arguments))

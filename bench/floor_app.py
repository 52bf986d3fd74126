"""The floor under a stream's start in Python: the least an ASGI app on uvicorn can do to open an SSE stream.

It answers ``GET /events/...`` with the gateway's headers and one comment, then waits for the client to leave; no
Redis, no routing, no checks. Run by ``python -m bench.storm --servers gateway1,nchan1,floor --scenarios empty``: what
the gateway spends per new stream above this is its own, and what this spends is uvicorn's (httptools, uvloop).
"""

from __future__ import annotations

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def app(scope, receive, send) -> None:  # noqa: ANN001 - plain ASGI
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if not scope["path"].startswith("/events/"):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass

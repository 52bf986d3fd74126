"""The floor under a stream's start and a publish in Python: the least an ASGI app on uvicorn can do for each.

It answers ``GET /events/...`` with the gateway's headers and one comment, then waits for the client to leave, and
``POST /publish/...`` by reading the body and answering 201 with a JSON id; no Redis, no routing, no checks. Run by
``python -m bench.storm --servers gateway1,nchan1,floor --scenarios empty`` and ``python -m bench.publish --servers
gateway1,nchan1,floor``: what the gateway spends above this is its own, and what this spends is uvicorn's
(httptools, uvloop).
"""

from __future__ import annotations

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
PUBLISHED = b'{"channel":"c","id":"1-0"}\n'
PUBLISHED_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(PUBLISHED)).encode())]


async def app(scope, receive, send) -> None:  # noqa: ANN001 - plain ASGI
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "POST" and scope["path"].startswith("/publish/"):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 201, "headers": PUBLISHED_HEADERS})
        await send({"type": "http.response.body", "body": PUBLISHED})
        return
    if not scope["path"].startswith("/events/"):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass

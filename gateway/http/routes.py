"""HTTP endpoints: event streams, publish, liveness and readiness."""

from __future__ import annotations

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway.errors import JSONLine, RedisUnavailable, error_response
from gateway.fanout.hub import Hub
from gateway.http.events import stream_for, ticket_for
from gateway.http.stream import stream_headers
from gateway.http.tickets import create_ticket
from gateway.metrics import metrics


class _Anything(PathConvertor):
    """Like ``path``, but newlines too: a channel named "a\\n" must reach validation (and a 400), not match "a"."""

    regex = r"[\s\S]*"


register_url_convertor("anything", _Anything())


async def events(request: Request) -> StreamHead:
    """A HEAD of a stream: the checks and headers of a GET (answered in front of this app, gateway.http.events), and
    no stream. A page learns a refused stream's status this way (EventSource does not tell it), and a HEAD that ran
    the stream would hold its connection for as long as a GET."""
    state = request.app.state
    stream_for(state, request.scope, request.path_params.get("channel"), await ticket_for(state, request.scope))
    return StreamHead(stream_headers(state.settings.retry_ms))


class StreamHead:
    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b""})


async def publish(request: Request) -> Response:
    """Never reached: POST /publish and /publish/{channel} are answered in front of this app (gateway.http.publish).
    The routes are here so that other methods on those paths get 405, as on every route."""
    raise RuntimeError(f"POST {request.url.path} should have been answered by gateway.http.publish")


async def healthz(request: Request) -> Response:
    return JSONLine({"status": "ok"})


async def readyz(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    if hub.draining:
        return error_response(503, "draining", "the gateway is shutting down")
    if not hub.broker.live or not await hub.broker.ping():
        return RedisUnavailable("Redis is unreachable").response()
    return JSONLine({"status": "ready"})


async def demo_redirect(request: Request) -> Response:
    return RedirectResponse("/demo/" + (f"?{request.url.query}" if request.url.query else ""))


routes = [
    Route("/events", events, methods=["GET"]),
    Route("/events/{channel:anything}", events, methods=["GET"]),
    Route("/publish", publish, methods=["POST"]),
    Route("/publish/{channel:anything}", publish, methods=["POST"]),
    Route("/tickets", create_ticket, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/demo", demo_redirect, methods=["GET"]),
    # The static pages of clients/web/, shipped in the wheel as the sse_gateway_web package.
    Mount("/demo/", StaticFiles(packages=[("sse_gateway_web", "demo")], html=True)),
    Mount("/web/", StaticFiles(packages=[("sse_gateway_web", ".")], html=True)),
]

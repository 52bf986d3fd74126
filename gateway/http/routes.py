"""HTTP endpoints: event streams, publish, liveness and readiness."""

from __future__ import annotations

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.errors import JSONLine, RedisUnavailable, error_response
from gateway.fanout.hub import Hub
from gateway.http.events import stream_for
from gateway.http.stream import EventStream
from gateway.metrics import metrics


class _Anything(PathConvertor):
    """Like ``path``, but newlines too: a channel named "a\\n" must reach validation (and a 400), not match "a"."""

    regex = r"[\s\S]*"


register_url_convertor("anything", _Anything())


async def events(request: Request) -> EventStream:
    """A HEAD of a stream: GET is answered in front of this app (gateway.http.events), the same way."""
    return stream_for(request.app.state, request.scope, request.path_params.get("channel"))


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
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/demo", demo_redirect, methods=["GET"]),
    # The static pages of clients/web/, shipped in the wheel as the sse_gateway_web package.
    Mount("/demo/", StaticFiles(packages=[("sse_gateway_web", "demo")], html=True)),
    Mount("/web/", StaticFiles(packages=[("sse_gateway_web", ".")], html=True)),
]

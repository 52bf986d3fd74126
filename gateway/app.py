"""create_app: the ASGI application. Its lifespan builds the broker and hub, and ends them."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from gateway.brokers import broker_for
from gateway.brokers.protocol import Broker
from gateway.config import Settings, split_list
from gateway.demo import DemoPublisher
from gateway.errors import GatewayError, error_response
from gateway.fanout.hub import Hub
from gateway.fanout.recent import recent_limits
from gateway.http.access_log import AccessLog
from gateway.http.events import EventsFront
from gateway.http.publish import PublishFront
from gateway.http.publish_rate import PublishRate
from gateway.http.routes import routes
from gateway.http.stream import RETRY_HEADER, StreamHost
from gateway.metrics import process_exited
from gateway.security.auth import Authenticator
from gateway.security.tickets import Tickets

log = logging.getLogger("gateway.app")


def create_app(
    settings: Settings,
    *,
    broker: Broker | None = None,
    authenticator: Authenticator | None = None,
    on_shutdown: Callable[[], None] | None = None,
    demo: bool = False,
) -> StreamHost:
    """The gateway for ``settings.redis_url``, or on ``broker``; ``on_shutdown`` runs last, after every stream ended.

    The lifespan starts the broker and closes it at the end, a given one too. Raises ValueError for settings that
    must not start (no Redis URL and no broker, or an exposed gateway with no auth keys).
    """
    if settings.redis_url is None and broker is None:
        raise ValueError("create_app needs settings.redis_url; the CLI starts an embedded server when it is unset")
    authenticator = authenticator or Authenticator(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub = Hub(
            broker or broker_for(settings),
            tick=min(1.0, settings.heartbeat / 2, settings.send_timeout / 2),
            recent=recent_limits(settings),
            shared_replay_bytes=settings.shared_replay_bytes,
        )
        try:
            await hub.start()
        except BaseException:
            await hub.broker.close()  # its connections, and a cluster's topology task, must not outlive the failure
            raise
        app.state.settings = settings
        app.state.hub = hub
        app.state.auth = authenticator
        app.state.tickets = Tickets(hub.broker, settings.ticket_ttl)
        app.state.publish_rate = PublishRate(settings.publish_rate, settings.publish_burst)
        restore_signals = _drain_on_exit_signals(hub)
        publisher = DemoPublisher(hub.broker) if demo else None
        if publisher is not None:
            publisher.start()
        try:
            yield
        finally:
            restore_signals()
            if publisher is not None:
                await publisher.stop()
            await hub.stop()
            await hub.broker.close()
            process_exited()
            if on_shutdown is not None:
                on_shutdown()

    starlette = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error, Exception: _internal_error},
    )
    # The stream and publish endpoints run in front of Starlette (gateway.http.events, gateway.http.publish); the
    # access log and CORS wrap them all.
    app: ASGIApp = PublishFront(EventsFront(starlette, starlette.state), starlette.state)
    if settings.cors_origins:
        app = CORSMiddleware(
            app,
            allow_origins=split_list(settings.cors_origins),
            allow_credentials=settings.cors_credentials,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-API-Key", "Cache-Control"],
            expose_headers=[RETRY_HEADER],
            max_age=600,
        )
    return StreamHost(AccessLog(app), starlette)


def _drain_on_exit_signals(hub: Hub) -> Callable[[], None]:
    """Drain the hub on SIGTERM/SIGINT, before the server's own handler runs.

    uvicorn waits for open responses before it runs the lifespan shutdown, and SSE responses never end by
    themselves, so the app must end them when the signal arrives. The server's handler is chained, not replaced.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(hub.drain)
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL and signum == signal.SIGINT:
            raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return restore


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, f"{exc.detail}: {request.method} {request.url.path}")
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", "the gateway failed to handle this request; see its log")

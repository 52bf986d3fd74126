"""Run the gateway under uvicorn, with an embedded Redis-protocol server when no Redis URL is configured."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile

import uvicorn

from gateway import logs
from gateway.app import create_app
from gateway.brokers import BrokerModeError, resolve_cluster_mode
from gateway.brokers.embedded import EmbeddedServer, EmbeddedServerError
from gateway.config import Settings, split_list
from gateway.http.protocol import HttpLimits, protocol_for
from gateway.http.stream import StreamHost
from gateway.metrics import MULTIPROCESS_DIR
from gateway.security.auth import Authenticator

log = logging.getLogger("gateway.server")


# Exit codes: 2 for settings that cannot work, 1 for an address that cannot be listened on, 3 for an app that failed
# to start (uvicorn's own code for that).
EXIT_BAD_SETTINGS, EXIT_CANNOT_LISTEN, EXIT_STARTUP_FAILED = 2, 1, 3


def serve(settings: Settings, *, demo: bool = False) -> int:
    logs.configure(settings.log_level, settings.log_format)
    try:
        authenticator = Authenticator(settings)  # refuse bad settings before anything starts
    except (ValueError, OSError) as exc:
        log.error("not starting: %s", exc)
        return EXIT_BAD_SETTINGS
    # The port first: a busy one is a one-line error before any Redis, app or child process exists.
    try:
        listener = listen(settings.host, settings.port)
    except OSError as exc:
        log.error("not starting: cannot listen on %s: %s", _address(settings.host, settings.port), exc.strerror or exc)
        return EXIT_CANNOT_LISTEN
    settings = settings.replace(port=listener.getsockname()[1])  # the real one, when asked for port 0
    embedded = None
    if settings.redis_url is None:
        try:
            embedded = EmbeddedServer()
            settings = settings.replace(redis_url=embedded.start())
        except EmbeddedServerError as exc:
            listener.close()
            log.error("not starting: %s", exc)
            return EXIT_STARTUP_FAILED
    try:
        settings = resolve_cluster_mode(settings)  # one node or a cluster, decided once for every worker
    except BrokerModeError as exc:
        listener.close()
        if embedded is not None:
            embedded.stop()
        log.error("not starting: %s", exc)
        return EXIT_STARTUP_FAILED
    options = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The app logs requests itself, with tokens in query strings redacted (gateway.http.access_log).
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=None
        if settings.forwarded_allow_ips is None
        else list(split_list(settings.forwarded_allow_ips)),
        log_config=None,  # keep the logging set up above, for uvicorn's own lines too
        # A backstop only: the app ends its streams itself on SIGTERM (see gateway.app).
        timeout_graceful_shutdown=settings.shutdown_grace,
        http=protocol_for(
            HttpLimits(
                max_head_bytes=settings.max_request_head_bytes,
                request_timeout=settings.request_timeout,
                max_connections=settings.max_http_connections,
            )
        ),
    )
    try:
        if settings.workers > 1:
            # uvicorn binds again in its supervisor and hands that socket to the workers; ours only proved the port
            # free, and is closed just before, so the window in which another process could take it is tiny.
            listener.close()
            # Worker processes import the app afresh and rebuild the settings from the environment; their metrics
            # meet in files that /metrics adds up.
            os.environ.update(settings.to_env())
            os.environ.setdefault(MULTIPROCESS_DIR, tempfile.mkdtemp(prefix="sse-gateway-metrics-"))
            uvicorn.run("gateway.server:app_from_env", factory=True, workers=settings.workers, **options)
        else:
            # uvicorn re-raises SIGTERM after its shutdown, so nothing after run() is sure to run: the app's
            # lifespan stops the embedded server instead.
            app = create_app(
                settings, authenticator=authenticator, on_shutdown=embedded.stop if embedded else None, demo=demo
            )
            server = uvicorn.Server(uvicorn.Config(app, **options))
            # uvicorn logs no address for a socket handed to it; the port is bound and listening already.
            address = _address(settings.host, settings.port)
            if demo:
                log.info("demo running: open http://%s/demo/ in a browser", address)
            else:
                log.info("listening on http://%s (Ctrl-C to stop)", address)
            # uvicorn re-raises a Ctrl-C as KeyboardInterrupt after its clean shutdown: ended quietly, as uvicorn.run
            # does (exit 0).
            with contextlib.suppress(KeyboardInterrupt):
                server.run(sockets=[listener])
            if not server.started:
                return EXIT_STARTUP_FAILED
    finally:
        listener.close()
        if embedded is not None:
            embedded.stop()
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, bound as uvicorn binds (address reuse on, IPv6 for a v6 host)."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)  # listening at once: on Linux a second bind with address reuse succeeds until then
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def app_from_env() -> StreamHost:
    """The app of one worker process; its logging is set up anew, as spawned processes start blank."""
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)

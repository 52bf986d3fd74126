"""Run the gateway under uvicorn, with an embedded Redis-protocol server when no Redis URL is configured."""

from __future__ import annotations

import logging
import os
import tempfile

import uvicorn

from gateway import logs
from gateway.app import create_app
from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.embedded import EmbeddedServer
from gateway.metrics import MULTIPROCESS_DIR
from gateway.stream import StreamHost

log = logging.getLogger("gateway.server")


def serve(settings: Settings, *, demo: bool = False) -> int:
    logs.configure(settings.log_level, settings.log_format)
    try:
        authenticator = Authenticator(settings)  # refuse bad settings before anything starts
    except (ValueError, OSError) as exc:
        log.error("not starting: %s", exc)
        return 2
    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedServer()
        settings = settings.replace(redis_url=embedded.start())
    options = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The app logs requests itself, with tokens in query strings redacted (gateway.access_log).
        access_log=False,
        log_config=None,  # keep the logging set up above, for uvicorn's own lines too
        # A backstop only: the app ends its streams itself on SIGTERM (see gateway.app).
        timeout_graceful_shutdown=settings.shutdown_grace,
    )
    try:
        if settings.workers > 1:
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
            if demo:
                log.info("demo running: open http://%s:%s/demo/ in a browser", settings.host, settings.port)
            uvicorn.run(app, **options)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def app_from_env() -> StreamHost:
    """The app of one worker process; its logging is set up anew, as spawned processes start blank."""
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)

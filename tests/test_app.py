"""create_app's own handlers and mounts: the JSON 500 of an unhandled error, and the static web client under /web/."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.config import Settings
from tests.servers import ThreadedServer

WEB = Path(__file__).resolve().parent.parent / "clients" / "web"


class Boom(RuntimeError):
    pass


async def _fails(request: Request) -> Response:
    raise Boom("a bug inside a route")


def test_an_unhandled_error_is_a_json_500_and_a_logged_traceback(redis_server, caplog):
    app = create_app(Settings(redis_url=redis_server.url, auth="off"))
    # A route of the test's own is the one way to fail inside the app on purpose; the handler is the app's.
    app.starlette.router.routes.append(Route("/fails", _fails, methods=["GET"]))
    with caplog.at_level(logging.ERROR, logger="gateway.app"), ThreadedServer(app, log_level="critical") as server:
        response = httpx.get(f"{server.url}/fails", timeout=10)
        # The gateway still serves after it.
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "internal" and "see its log" in body["detail"]
    assert "a bug inside a route" not in response.text, "the error's text stays in the log"
    (record,) = [r for r in caplog.records if r.name == "gateway.app"]
    assert record.getMessage() == "unhandled error on GET /fails"
    assert record.exc_info is not None and record.exc_info[0] is Boom


def test_web_mount_serves_the_client_files_with_their_content_types(gateway):
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        index = client.get("/web/")
        script = client.get("/web/app.js")
        missing = client.get("/web/no-such-file.js")
    assert index.status_code == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.content == (WEB / "index.html").read_bytes()
    assert script.status_code == 200
    assert script.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert script.content == (WEB / "app.js").read_bytes()
    assert (missing.status_code, missing.headers["content-type"]) == (404, "application/json")
    assert missing.json()["error"] == "not_found"

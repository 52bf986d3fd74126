"""CORS for pages on other origins: preflights for publishing, and the headers an EventSource needs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.servers import GatewayProcess

PAGE = "http://dashboard.example:8080"


@pytest.fixture(scope="module")
def cors_gateway(redis_server) -> Iterator[GatewayProcess]:
    env = {"SSE_GATEWAY_CORS_ORIGINS": PAGE, "SSE_GATEWAY_CORS_CREDENTIALS": "true", "SSE_GATEWAY_RETRY_MS": "1234"}
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


def test_preflight_for_a_publish_with_credentials_headers_is_answered(cors_gateway, channel):
    response = httpx.options(
        f"{cors_gateway.url}/publish/{channel}",
        headers={
            "Origin": PAGE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, x-api-key, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PAGE
    assert response.headers["access-control-allow-credentials"] == "true"
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "x-api-key", "content-type", "last-event-id"} <= {h.strip() for h in allowed.split(",")}


def test_preflight_from_an_origin_not_listed_is_refused(cors_gateway, channel):
    response = httpx.options(
        f"{cors_gateway.url}/publish/{channel}",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_event_stream_carries_the_origin_headers_an_event_source_needs(cors_gateway, channel):
    with httpx.stream(
        "GET", f"{cors_gateway.url}/events/{channel}", headers={"Origin": PAGE, "Accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == PAGE
        assert response.headers["access-control-allow-credentials"] == "true"
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"


def test_a_page_can_read_the_retry_hint_of_a_stream_from_a_head(cors_gateway, channel):
    response = httpx.head(f"{cors_gateway.url}/events/{channel}", headers={"Origin": PAGE})
    assert response.status_code == 200
    assert response.headers["x-sse-retry"] == "1234"  # SSE_GATEWAY_RETRY_MS, as in the stream's retry: line
    assert response.headers["access-control-expose-headers"].lower() == "x-sse-retry"


def test_without_configured_origins_no_cors_headers_are_sent(gateway, channel):
    response = httpx.post(f"{gateway.url}/publish/{channel}", content="x", headers={"Origin": PAGE})
    assert response.status_code == 201
    assert "access-control-allow-origin" not in response.headers

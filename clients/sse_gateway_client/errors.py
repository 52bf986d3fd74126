"""Exceptions raised by the client.

GatewayClientError            base class: catch this to handle every client failure
 ├── GatewayHTTPError         the gateway answered, but not with the expected status or content type
 └── GatewayConnectionError   the gateway could not be reached, or the connection broke with no retry left
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["GatewayClientError", "GatewayConnectionError", "GatewayHTTPError"]


class GatewayClientError(Exception):
    """Base class of every error raised by `sse_gateway_client`."""


class GatewayConnectionError(GatewayClientError):
    """A network-level failure (connect, read, timeout); the original httpx error is the `__cause__`."""


class GatewayHTTPError(GatewayClientError):
    """An unexpected response. `body` is the gateway's JSON error, e.g. `{"error": "...", "detail": "..."}`."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        self.status_code = status_code
        self.body = body
        error = body.get("error", "http_error")
        detail = body.get("detail")
        super().__init__(f"{status_code} {error}: {detail}" if detail else f"{status_code} {error}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> GatewayHTTPError:
        """Build the error from a response whose body has been read; a non-JSON body becomes the `detail`."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            body = {"error": f"http_{response.status_code}", "detail": response.text[:500]}
        return cls(response.status_code, body)

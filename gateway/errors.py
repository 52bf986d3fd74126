"""Errors the gateway answers with. Each maps to one HTTP status and a JSON body.

    GatewayError                 500  internal
    ├── BadRequest               400  (bad_channel, bad_event_type, bad_cursor, too_many_channels, ...)
    ├── Unauthorized             401  unauthorized (no valid credentials)
    ├── Forbidden                403  forbidden (valid credentials, channel not granted)
    ├── PayloadTooLarge          413  body_too_large
    ├── TooManyRequests          429  rate_limited (with Retry-After)
    └── RedisUnavailable         503  redis_unavailable

The JSON body is always ``{"error": <code>, "detail": <human sentence>}``, on one line ending in a newline.
"""

from __future__ import annotations

import math

from starlette.responses import JSONResponse


class JSONLine(JSONResponse):
    """A JSON answer on one line with a newline after it, so that `curl` leaves the shell's prompt on a line of its
    own and a script can read answers line by line."""

    def render(self, content: object) -> bytes:
        return super().render(content) + b"\n"


class GatewayError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    def response(self) -> JSONLine:
        return error_response(self.status_code, self.code, self.detail)


class BadRequest(GatewayError):
    status_code = 400
    code = "bad_request"


class Unauthorized(GatewayError):
    status_code = 401
    code = "unauthorized"

    def response(self) -> JSONLine:
        response = super().response()
        response.headers["WWW-Authenticate"] = 'Bearer realm="sse-gateway"'
        return response


class Forbidden(GatewayError):
    status_code = 403
    code = "forbidden"


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "body_too_large"


class TooManyRequests(GatewayError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def response(self) -> JSONLine:
        response = super().response()
        response.headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return response


class RedisUnavailable(GatewayError):
    status_code = 503
    code = "redis_unavailable"


def error_response(status_code: int, code: str, detail: str) -> JSONLine:
    return JSONLine({"error": code, "detail": detail}, status_code=status_code)

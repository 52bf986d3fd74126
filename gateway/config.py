"""One frozen Settings object, built from SSE_GATEWAY_* environment variables and CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "SSE_GATEWAY_"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # None means: start a private embedded Redis-protocol server.
    redis_url: str | None = None
    key_prefix: str = "sse:"
    # Each channel's replay buffer is a Redis Stream trimmed to about this many entries ...
    buffer_maxlen: int = 1000
    # ... and to entries younger than this many seconds (0 turns the age limit off).
    buffer_max_age: float = 3600.0
    # ... and, without an age limit, deleted once its channel has been quiet this many seconds (0: kept for ever).
    # With an age limit a buffer is deleted once quiet for that long plus a second (see publish.lua).
    buffer_idle_ttl: float = 86400.0
    heartbeat: float = 15.0
    retry_ms: int = 3000
    max_channels: int = 16
    # Open streams per process; past it a stream is ended at once with a long retry hint.
    max_connections: int = 10_000
    # Publishes a second per client IP, in bursts of up to publish_burst; 0 is no limit.
    publish_rate: float = 0.0
    publish_burst: int = 50
    max_body_bytes: int = 1024 * 1024
    # A client whose unsent frames pass either bound is disconnected; it resumes with Last-Event-ID.
    client_buffer_events: int = 1024
    client_buffer_bytes: int = 4 * 1024 * 1024
    # A client that accepts no bytes for this long is disconnected.
    send_timeout: float = 30.0
    # Bound on how long a stream may take to shut down on SIGTERM before uvicorn cancels it.
    shutdown_grace: float = 5.0
    log_level: str = "info"
    log_format: str = "text"  # or "json": one object per line
    # Authentication: "auto" is on when a key is configured, off (loudly) for a loopback-only gateway without keys,
    # and refuses to start otherwise; "jwt" is always on; "off" lets anyone subscribe and publish.
    auth: str = "auto"
    jwt_secret: str | None = None
    jwt_public_key_file: str | None = None
    jwt_jwks_file: str | None = None
    jwt_audience: str | None = None
    # Comma-separated lists.
    api_keys: str = ""
    public_channels: str = ""
    auth_cookie: str = "sse_token"
    cors_origins: str = ""
    cors_credentials: bool = False
    # Channel globs whose slow clients get only the newest queued event per channel instead of being evicted.
    conflate_channels: str = ""

    def __post_init__(self) -> None:
        positive = (
            "heartbeat", "max_channels", "max_connections", "max_body_bytes", "client_buffer_events",
            "client_buffer_bytes", "publish_burst",
        )  # fmt: skip
        for name in (*positive, "send_timeout", "workers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be greater than 0, not {getattr(self, name)}")
        not_negative = ("retry_ms", "buffer_maxlen", "buffer_max_age", "buffer_idle_ttl", "shutdown_grace")
        for name in (*not_negative, "publish_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")

    def replace(self, **changes: Any) -> Settings:
        """A copy with the given fields changed; None values are ignored so unset CLI flags keep the default."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """The SSE_GATEWAY_* variables that rebuild these settings, e.g. in uvicorn's worker processes."""
        return {
            ENV_PREFIX + field.name.upper(): str(getattr(self, field.name))
            for field in fields(self)
            if getattr(self, field.name) is not None
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            # An empty value means "unset", except for plain text settings where "" is a value (no key prefix).
            if raw is None or (raw == "" and field.type != "str"):
                continue
            values[field.name] = _coerce(field.name, field.type, raw)
        return cls(**values)


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated setting as its items, blanks dropped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _coerce(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    if kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a boolean (true/false)")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
    return raw

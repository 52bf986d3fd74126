"""One frozen Settings object, built from SSE_GATEWAY_* environment variables and CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any

ENV_PREFIX = "SSE_GATEWAY_"
# Seconds a Redis command may take before its connection counts as dead (gateway.brokers.connections); a publish's
# WAIT for replicas must end well before that.
REDIS_SOCKET_TIMEOUT = 5.0
MAX_PUBLISH_REPLICAS_TIMEOUT = 4.0


def setting(default: Any, help: str, *, choices: tuple[str, ...] = ()) -> Any:
    """A Settings field with its help text and, for a closed set of words, its choices.

    The `serve` flags are generated from these (gateway.cli), and SSE_GATEWAY_* values are checked against the choices.
    """
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    host: str = setting("127.0.0.1", "address to bind (the Docker image uses 0.0.0.0)")
    port: int = setting(8000, "port to listen on (0: any free port)")
    workers: int = setting(1, "worker processes; each has its own upstream subscriptions")
    # A proxy in front passes the client's address in X-Forwarded-For; only these peers are believed, so a client
    # that reaches the gateway directly cannot forge its address for the rate limit and the logs.
    forwarded_allow_ips: str | None = setting(
        None,
        "comma-separated proxy addresses or networks whose X-Forwarded-For/-Proto is believed, or * (unset: "
        "uvicorn's FORWARDED_ALLOW_IPS, or 127.0.0.1 and ::1)",
    )
    redis_url: str | None = setting(
        None,
        "redis://, rediss:// or unix:// URL (a cluster: any node, or several, comma-separated); unset starts an "
        "embedded server",
    )
    publish_replicas: int = setting(
        0, "replicas that must have an event before its publish is acknowledged and sent live (0: none; see README)"
    )
    publish_replicas_timeout: float = setting(
        1.0, "seconds (at most 4) a publish waits for those replicas; past it a 503 not_replicated"
    )
    publish_pipeline: bool = setting(
        True, "publishes that arrive while one is in Redis go together in one pipeline (off only to measure it)"
    )
    publish_merge: bool = setting(
        True, "those of one channel go as one script call in that pipeline (off only to measure it)"
    )
    redis_cluster: str = setting(
        "auto",
        "Redis Cluster with sharded Pub/Sub: on, off, or auto (asks the node at start)",
        choices=("auto", "on", "off"),
    )
    key_prefix: str = setting("sse:", "prefix of every Redis key and Pub/Sub channel")
    # Each channel's replay buffer is a Redis Stream trimmed to about this many entries ...
    buffer_maxlen: int = setting(1000, "entries kept per channel for replay, at least (0: no limit)")
    # ... and to entries younger than this many seconds (0 turns the age limit off).
    buffer_max_age: float = setting(3600.0, "seconds replay entries are kept, at least (0: no limit)")
    # ... and, without an age limit, deleted once its channel has been quiet this many seconds (0: kept for ever).
    # With an age limit a buffer is deleted once quiet for that long plus a second (see publish.lua).
    buffer_idle_ttl: float = setting(
        86400.0, "seconds a quiet channel's buffer is kept when there is no age limit (0: for ever)"
    )
    # The most recent events of each channel with local subscribers, in memory, so that resumes need no Redis
    # command (gateway.fanout.recent); never more than the buffer keeps.
    recent_events: int = setting(1000, "recent events kept in memory per channel for resumes (0: none)")
    recent_bytes: int = setting(1024 * 1024, "bytes of recent events kept in memory per channel")
    recent_total_events: int = setting(200_000, "recent events kept in memory in all, every channel together")
    recent_total_bytes: int = setting(64 * 1024 * 1024, "bytes of recent events kept in memory in all")
    shared_replay_bytes: bool = setting(
        True, "a span of replayed events is joined once for every stream that sends it (off only to measure it)"
    )
    heartbeat: float = setting(15.0, "seconds of quiet before a keepalive comment")
    retry_ms: int = setting(3000, "the retry: hint, in milliseconds, sent at the start of each stream")
    max_channels: int = setting(16, "channels per connection")
    max_connections: int = setting(10_000, "open streams per process; past it a stream ends at once")
    publish_rate: float = setting(0.0, "publishes a second per client IP (0: no limit)")
    publish_burst: int = setting(50, "burst of publishes allowed above the publish rate")
    max_body_bytes: int = setting(1024 * 1024, "largest publish body")
    # Bounds on what a client can hold before it is a stream (see gateway.http.protocol); 0 turns one off.
    max_batch_bytes: int = setting(16 * 1024 * 1024, "largest body of a batch publish (POST /publish)")
    max_batch_events: int = setting(10_000, "most events in one batch publish")
    max_request_head_bytes: int = setting(16 * 1024, "longest request line and headers; past it a 431 (0: no limit)")
    request_timeout: float = setting(10.0, "seconds a client has to send its whole request, head and body (0: none)")
    max_http_connections: int = setting(12_000, "open connections per process, streams or not; past it a 503 (0: none)")
    # A client whose unsent frames pass either bound is disconnected; it resumes with Last-Event-ID.
    client_buffer_events: int = setting(1024, "frames queued for one client before it is disconnected")
    client_buffer_bytes: int = setting(4 * 1024 * 1024, "bytes queued for one client before it is disconnected")
    # How a live stream's frames reach its client (gateway.fanout.writer): the fastest way that works, unless one is
    # chosen here to measure the others.
    write_path: str = setting(
        "direct",
        "how live frames (and publish answers) are written: direct (into uvicorn's transport), stepped, plain",
        choices=("direct", "stepped", "plain"),
    )
    send_timeout: float = setting(30.0, "seconds a client may accept no bytes before it is disconnected")
    shutdown_grace: float = setting(5.0, "seconds uvicorn waits for streams on shutdown before it cancels them")
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error", "critical"))
    log_format: str = setting("text", "text, or json: one object per line", choices=("text", "json"))
    # "auto" is on when a key is configured, off (loudly) for a loopback-only gateway without keys, and refuses to
    # start otherwise; "jwt" is always on; "off" lets anyone subscribe and publish.
    auth: str = setting("auto", "authentication (see Protected mode in the README)", choices=("auto", "jwt", "off"))
    jwt_secret: str | None = setting(None, "HS256 secret")
    jwt_public_key_file: str | None = setting(None, "PEM public key (RSA for RS256, EC P-256 for ES256)")
    jwt_jwks_file: str | None = setting(None, "JWKS file for RS256/ES256 keys, picked by kid")
    jwt_audience: str | None = setting(None, "required aud of tokens")
    api_keys: str = setting("", "comma-separated keys that may publish (X-API-Key)")
    ticket_api_keys: str = setting("", "comma-separated keys that may make stream tickets for any channel (X-API-Key)")
    public_channels: str = setting("", "comma-separated globs anyone may subscribe to")
    auth_cookie: str = setting("sse_token", "the cookie a token may come in")
    # A stream ticket (POST /tickets) stands in for a credential in a stream's URL, for this long at most.
    ticket_ttl: float = setting(60.0, "seconds a stream ticket may be used to open a stream")
    cors_origins: str = setting("", "comma-separated origins allowed to call the gateway from a page, or *")
    cors_credentials: bool = setting(False, "allow cookies on cross-origin requests")
    # Slow clients of these channels get only the newest queued event per channel instead of being evicted.
    conflate_channels: str = setting("", "comma-separated globs of channels whose clients keep only the newest event")
    # Channels that other programs already PUBLISH to under their bare names: their messages are streamed live too.
    raw_channels: str = setting(
        "", "comma-separated globs of channels also heard on the bare Redis channel of their name"
    )

    def __post_init__(self) -> None:
        positive = (
            "heartbeat", "max_channels", "max_connections", "max_body_bytes", "client_buffer_events",
            "client_buffer_bytes", "publish_burst", "max_batch_bytes", "max_batch_events",
        )  # fmt: skip
        for name in (*positive, "send_timeout", "workers", "publish_replicas_timeout", "ticket_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be greater than 0, not {getattr(self, name)}")
        not_negative = ("retry_ms", "buffer_maxlen", "buffer_max_age", "buffer_idle_ttl", "shutdown_grace")
        limits = ("max_request_head_bytes", "request_timeout", "max_http_connections")
        for name in (*not_negative, *limits, "publish_rate", "publish_replicas"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.publish_replicas_timeout > MAX_PUBLISH_REPLICAS_TIMEOUT:
            # The WAIT must end before the connection's socket timeout, or a slow replica reads as a dead Redis.
            raise ValueError(
                f"publish_replicas_timeout must be at most {MAX_PUBLISH_REPLICAS_TIMEOUT:g} seconds (the Redis socket "
                f"timeout is {REDIS_SOCKET_TIMEOUT:g}), not {self.publish_replicas_timeout}"
            )

    def replace(self, **changes: Any) -> Settings:
        """A copy with the given fields changed; None values are ignored so unset CLI flags keep the default."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """The SSE_GATEWAY_* variables that rebuild these settings, e.g. in uvicorn's worker processes."""
        return {
            env_name(item.name): str(getattr(self, item.name))
            for item in fields(self)
            if getattr(self, item.name) is not None
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = environ.get(env_name(item.name))
            if raw is None:
                continue
            try:
                value = parse(item, raw)
            except ValueError as exc:
                raise ValueError(f"{env_name(item.name)}={raw!r} {exc}") from None
            if value is not None:
                values[item.name] = value
        return cls(**values)


def env_name(name: str) -> str:
    """The SSE_GATEWAY_* variable of a setting."""
    return ENV_PREFIX + name.upper()


def kind(item: Field[Any]) -> str:
    """A setting's value type as a word: "bool", "int", "float" or "str" (an optional setting counts as its type)."""
    return str(item.type).removesuffix(" | None")


def parse(item: Field[Any], raw: str) -> Any:
    """A setting's value from text (a variable or a flag); None means unset. ValueError says what is wrong.

    An empty text means unset, except for plain text settings where "" is a value (no key prefix).
    """
    if raw == "" and item.type != "str":
        return None
    choices = item.metadata.get("choices")
    # Without case, since SSE_GATEWAY_LOG_LEVEL=DEBUG has always worked; the value is kept as written.
    if choices and raw.lower() not in choices:
        raise ValueError(f"is not one of {', '.join(choices)}")
    word = kind(item)
    if word == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("is not a boolean (true/false)")
    try:
        if word == "int":
            return int(raw)
        if word == "float":
            return float(raw)
    except ValueError:
        raise ValueError("is not a number") from None
    return raw


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated setting as its items, blanks dropped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())

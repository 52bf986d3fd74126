"""Synchronous client: `publish()` one message, `publish_many()` a batch, `subscribe()` to a reconnecting stream of
events."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from .errors import GatewayConnectionError, GatewayHTTPError
from .parser import ServerSentEvent, SSEParser

__all__ = ["DEFAULT_BASE_URL", "Subscription", "publish", "publish_many", "subscribe"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
_EVENT_STREAM = "text/event-stream"


def _url(base_url: str, *segments: str) -> str:
    return "/".join([base_url.rstrip("/"), *(quote(segment, safe="") for segment in segments)])


def publish(
    channel: str,
    data: str | bytes,
    *,
    event: str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = 10.0,
    token: str | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Publish `data` on `channel` and return the gateway's answer, `{"channel": ..., "id": ...}`.

    `token` (a JWT with a publish grant) is sent as a Bearer token, `api_key` as `X-API-Key`.
    """
    if isinstance(data, str):
        content, content_type = data.encode("utf-8"), "text/plain; charset=utf-8"
    else:
        content, content_type = bytes(data), "application/octet-stream"
    url = _url(base_url, "publish", channel)
    params = {"event": event} if event is not None else {}
    headers = {"Content-Type": content_type, **_credentials(token)}
    if api_key:
        headers["X-API-Key"] = api_key
    try:
        response = httpx.post(url, content=content, params=params, headers=headers, timeout=timeout)
    except httpx.TransportError as exc:
        raise GatewayConnectionError(f"cannot publish to {url}: {exc}") from exc
    if response.status_code != 201:
        raise GatewayHTTPError.from_response(response)
    return response.json()


def publish_many(
    events: Iterable[Mapping[str, Any]],
    *,
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = 30.0,
    token: str | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Publish many events in one request, each a mapping with `"channel"`, `"data"` and optionally `"event"`.

    Returns the gateway's answer, `{"published": N, "failed": M, "results": [...]}`, one result per event in order:
    `{"line": n, "channel": ..., "id": ...}`, or `{"line": n, "error": ..., "detail": ...}` for an event the gateway
    refused (the others are published all the same). Check `answer["failed"]`. Raises GatewayHTTPError when the
    whole batch is refused (bad credentials, too large) and GatewayConnectionError when the gateway cannot be reached.
    """
    body = b"".join(json.dumps(dict(event), ensure_ascii=False).encode("utf-8") + b"\n" for event in events)
    return post_batch(body, base_url=base_url, timeout=timeout, token=token, api_key=api_key)


def post_batch(body: bytes, *, base_url: str, timeout: float, token: str | None, api_key: str | None) -> dict[str, Any]:
    url = _url(base_url, "publish")
    headers = {"Content-Type": "application/x-ndjson", **_credentials(token)}
    if api_key:
        headers["X-API-Key"] = api_key
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.TransportError as exc:
        raise GatewayConnectionError(f"cannot publish to {url}: {exc}") from exc
    if response.status_code not in (201, 207):
        raise GatewayHTTPError.from_response(response)
    return response.json()


class Subscription:
    """An event stream over one or more channels that reconnects the way a browser `EventSource` does.

    After a network error or a clean end of the body it waits the latest `retry:` (else `default_retry_ms`) and
    reconnects with `Last-Event-ID`. A 204 ends the iteration; any other non-200 status or a content type other
    than text/event-stream raises `GatewayHTTPError` without retrying. When no reconnect is left, a network error
    raises `GatewayConnectionError` and a clean end simply ends the iteration.

    `max_reconnects` counts reconnects over the subscription's whole life; `None` means no limit.
    `close()` may be called from another thread; it takes effect at the next event, heartbeat or reconnect wait.
    """

    def __init__(
        self,
        channels: str | Sequence[str],
        *,
        base_url: str = DEFAULT_BASE_URL,
        last_event_id: str | None = None,
        reconnect: bool = True,
        max_reconnects: int | None = None,
        default_retry_ms: int = 3000,
        read_timeout: float = 45.0,
        connect_timeout: float = 10.0,
        http_client: httpx.Client | None = None,
        token: str | None = None,
    ) -> None:
        self.channels = (channels,) if isinstance(channels, str) else tuple(channels)
        if not self.channels:
            raise ValueError("subscribe to at least one channel")
        if len(self.channels) == 1:
            self.url, self._params = _url(base_url, "events", self.channels[0]), []
        else:
            self.url, self._params = _url(base_url, "events"), [("channel", name) for name in self.channels]
        self.max_reconnects = max_reconnects if reconnect else 0
        self.default_retry_ms = default_retry_ms
        self.reconnects = 0
        # The read timeout must outlast the server's heartbeat interval, so only a dead connection trips it.
        self._timeout = httpx.Timeout(connect_timeout, read=read_timeout)
        self._http = http_client
        self._credentials = _credentials(token)
        self._parser = SSEParser(last_event_id or "")
        self._closed = threading.Event()

    @property
    def last_event_id(self) -> str:
        return self._parser.last_event_id

    @property
    def retry_ms(self) -> int:
        """The wait before the next reconnect: the stream's latest `retry:` value, else the default."""
        return self._parser.retry if self._parser.retry is not None else self.default_retry_ms

    def close(self) -> None:
        self._closed.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[ServerSentEvent]:
        return self._events()

    def _events(self) -> Generator[ServerSentEvent, None, None]:
        with self._client() as http:
            while not self._closed.is_set():
                error: httpx.TransportError | None = None
                try:
                    if not (yield from self._connect_once(http)):
                        return
                except httpx.TransportError as exc:
                    error = exc
                if self._closed.is_set():
                    return
                if self.max_reconnects is not None and self.reconnects >= self.max_reconnects:
                    if error is not None:
                        raise GatewayConnectionError(f"connection to {self.url} failed: {error}") from error
                    return
                if self._closed.wait(self.retry_ms / 1000):
                    return
                self.reconnects += 1

    def _client(self) -> contextlib.AbstractContextManager[httpx.Client]:
        if self._http is not None:
            return contextlib.nullcontext(self._http)
        return httpx.Client(follow_redirects=True)

    def _connect_once(self, http: httpx.Client) -> Generator[ServerSentEvent, None, bool]:
        """Stream one connection's events; return False when the gateway said 204 (stop reconnecting)."""
        headers: dict[str, str | bytes] = {"Accept": _EVENT_STREAM, "Cache-Control": "no-cache", **self._credentials}
        if self.last_event_id:
            # Ids are UTF-8 text; httpx would encode a str header as ASCII and fail on anything else.
            headers["Last-Event-ID"] = self.last_event_id.encode("utf-8")
        with http.stream("GET", self.url, params=self._params, headers=headers, timeout=self._timeout) as response:
            if response.status_code == 204:
                return False
            if response.status_code != 200:
                response.read()
                raise GatewayHTTPError.from_response(response)
            content_type = response.headers.get("content-type", "")
            if content_type.partition(";")[0].strip().lower() != _EVENT_STREAM:
                detail = f"expected {_EVENT_STREAM}, got {content_type or 'no content type'}"
                raise GatewayHTTPError(200, {"error": "bad_content_type", "detail": detail})
            self._parser.reset()
            for chunk in response.iter_bytes():
                yield from self._parser.feed(chunk)
                if self._closed.is_set():
                    return False
        return True


def subscribe(
    channels: str | Sequence[str],
    *,
    base_url: str = DEFAULT_BASE_URL,
    last_event_id: str | None = None,
    reconnect: bool = True,
    max_reconnects: int | None = None,
    default_retry_ms: int = 3000,
    token: str | None = None,
) -> Iterator[ServerSentEvent]:
    """Iterate over the events of `channels`, reconnecting like a browser; see `Subscription`."""
    subscription = Subscription(
        channels,
        base_url=base_url,
        last_event_id=last_event_id,
        reconnect=reconnect,
        max_reconnects=max_reconnects,
        default_retry_ms=default_retry_ms,
        token=token,
    )
    return iter(subscription)


def _credentials(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}

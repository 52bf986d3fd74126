"""Python client for sse-gateway: publish messages and follow channels as a reconnecting event stream.

>>> from sse_gateway_client import publish, subscribe
>>> publish("stocks", "hello")
{'channel': 'stocks', 'id': '...'}
>>> publish_many([{"channel": "stocks", "data": "a"}, {"channel": "news", "data": "b", "event": "flash"}])
{'published': 2, 'failed': 0, 'results': [...]}
>>> for event in subscribe(["stocks", "news"]):
...     print(event.event, event.id, event.data)
"""

from __future__ import annotations

from .client import DEFAULT_BASE_URL, Subscription, publish, publish_many, subscribe
from .errors import GatewayClientError, GatewayConnectionError, GatewayHTTPError
from .parser import ServerSentEvent, SSEParser

__all__ = [
    "DEFAULT_BASE_URL",
    "GatewayClientError",
    "GatewayConnectionError",
    "GatewayHTTPError",
    "SSEParser",
    "ServerSentEvent",
    "Subscription",
    "publish",
    "publish_many",
    "subscribe",
]

"""sse-gateway: Redis Pub/Sub channels streamed to HTTP clients as Server-Sent Events."""

from gateway.app import create_app
from gateway.config import Settings

__all__ = ["Settings", "create_app"]
__version__ = "0.1.0"

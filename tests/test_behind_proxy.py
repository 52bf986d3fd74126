"""The gateway behind a TLS proxy, as deployed: the real Debian nginx running deploy/nginx/sse-gateway-tls.conf and
Caddy running deploy/caddy/Caddyfile, with a self-signed certificate, in front of a real gateway, and Chromium.

Over HTTP/1.1 a browser opens at most 6 connections to an origin, so a seventh EventSource waits; through the proxy,
over HTTP/2, 12 streams are open at once. The proxy passes on the client's address, which the gateway believes only
from the proxy. Chromium is driven by Playwright's sync API, in plain functions (see tests/test_browser.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.proxies import (
    SHIPPED_CADDYFILE,
    CaddyProcess,
    TlsNginxProcess,
    caddy_binary,
    self_signed_certificate,
)
from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.test_metrics import _value

WAIT_MS = 10_000
STREAMS = 12
BROWSER_LIMIT = 6  # HTTP/1.1 connections per origin, in Chromium and Firefox alike
NGINX_ADDRESS = "127.0.0.2"  # nginx connects to the gateway from here (proxy_bind), and only here is trusted
CLIENT_ADDRESS = "127.0.0.3"
FORGED = "203.0.113.9"

# One EventSource per URL, each recording its opens and its messages by its index.
OPEN = """(urls) => {
  window.opened = []; window.received = [];
  window.sources = urls.map((url, i) => {
    const source = new EventSource(url);
    source.onopen = () => window.opened.push(i);
    source.onmessage = (e) => window.received.push([i, e.data]);
    return source;
  });
}"""
PROTOCOL = "performance.getEntriesByType('navigation')[0].nextHopProtocol"


class Proxied(NamedTuple):
    proxy: TlsNginxProcess | CaddyProcess
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def behind_nginx(redis_server: RedisProcess, certificate: tuple[Path, Path]) -> Iterator[Proxied]:
    env = {"SSE_GATEWAY_FORWARDED_ALLOW_IPS": NGINX_ADDRESS}
    gateway = GatewayProcess(redis_server.url, env=env).start()
    nginx = TlsNginxProcess(gateway.port, certificate, bind=NGINX_ADDRESS).start()
    yield Proxied(nginx, gateway)
    nginx.stop()
    gateway.stop()


@pytest.fixture(scope="module")
def behind_caddy(redis_server: RedisProcess, certificate: tuple[Path, Path]) -> Iterator[Proxied]:
    # Caddy 2.6 cannot choose the address it connects from, so here the trusted proxy is loopback's own. It notices
    # a client gone only some heartbeats later (about 4), and only then ends its request: short heartbeats.
    env = {"SSE_GATEWAY_FORWARDED_ALLOW_IPS": "127.0.0.1", "SSE_GATEWAY_HEARTBEAT": "0.25"}
    gateway = GatewayProcess(redis_server.url, env=env).start()
    caddy = CaddyProcess(gateway.port, certificate).start()
    yield Proxied(caddy, gateway)
    gateway.stop()  # first: Caddy waits for its streams to end
    caddy.stop()


@pytest.fixture(params=["nginx", "caddy"])
def behind_proxy(request: pytest.FixtureRequest) -> Proxied:
    return request.getfixturevalue(f"behind_{request.param}")


@pytest.fixture(scope="module")
def tls_browser() -> Iterator[Browser]:
    """Debian's headless Chromium, taking the self-signed certificate (module-scoped, as conftest's ``browser``)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (the browser tests need it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--ignore-certificate-errors"]
        )
        yield browser
        browser.close()


@pytest.fixture
def tls_page(tls_browser: Browser) -> Iterator[Page]:
    context = tls_browser.new_context()
    yield context.new_page()
    context.close()


def open_streams(gateway: GatewayProcess) -> int:
    return int(_value(httpx.get(f"{gateway.url}/metrics", timeout=5).text, "sse_open_streams"))


def wait_open_streams(gateway: GatewayProcess, count: int) -> None:
    wait_until(lambda: open_streams(gateway) == count, what=f"{count} open streams at the gateway", timeout=10)


def wait_for(page: Page, condition: str, arg: object = None) -> None:
    page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)


def open_event_sources(page: Page, channels: list[str]) -> None:
    page.evaluate(OPEN, [f"/events/{name}" for name in channels])


def publish(gateway: GatewayProcess, channels: list[str]) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for name in channels:
            assert client.post(f"/publish/{name}", content=f"to {name}").status_code == 201


def test_twelve_event_sources_in_one_page_are_open_at_once_over_http2_through_the_tls_proxy(
    behind_proxy, tls_page, channel
):
    proxy, gateway = behind_proxy
    channels = [f"{channel}-{i}" for i in range(STREAMS)]
    wait_open_streams(gateway, 0)  # the streams of an earlier test's page are all gone
    tls_page.goto(proxy.url + "/healthz")
    assert tls_page.evaluate(PROTOCOL) == "h2"

    open_event_sources(tls_page, channels)
    wait_for(tls_page, "n => window.opened.length === n", STREAMS)
    publish(gateway, channels)
    wait_for(tls_page, "n => window.received.length === n", STREAMS)
    received = tls_page.evaluate("window.received")
    assert sorted(received) == sorted([i, f"to {name}"] for i, name in enumerate(channels))
    assert open_streams(gateway) == STREAMS

    # The gateway saw each stream come from the browser's own address (port 0: it came in X-Forwarded-For).
    log = gateway.log()
    assert all(f'127.0.0.1:0 - "GET /events/{name} HTTP/1.1" 200' in log for name in channels), log[-3000:]
    # A proxy logs a request when it ends: close the streams, and every one was HTTP/2 from the browser.
    tls_page.evaluate("window.sources.forEach((source) => source.close())")
    wait_until(lambda: len(proxy.protocols(f"/events/{channel}-")) == STREAMS, what="the streams logged", timeout=10)
    assert set(proxy.protocols(f"/events/{channel}-")) == {"HTTP/2.0"}


def test_over_http1_straight_to_the_gateway_only_six_event_sources_open_and_a_seventh_waits_for_a_free_one(
    behind_nginx, tls_page, channel
):
    gateway = behind_nginx.gateway
    channels = [f"{channel}-{i}" for i in range(STREAMS)]
    wait_open_streams(gateway, 0)
    tls_page.goto(gateway.url + "/healthz")
    assert tls_page.evaluate(PROTOCOL) == "http/1.1"

    open_event_sources(tls_page, channels)
    wait_for(tls_page, "n => window.opened.length === n", BROWSER_LIMIT)
    publish(gateway, channels)
    wait_for(tls_page, "n => window.received.length === n", BROWSER_LIMIT)
    # Every event is published and 6 arrived: the other 6 streams never reached the gateway.
    assert open_streams(gateway) == BROWSER_LIMIT
    opened = tls_page.evaluate("window.opened")
    assert len(opened) == BROWSER_LIMIT
    assert sorted(i for i, _ in tls_page.evaluate("window.received")) == sorted(opened)

    # Closing one frees its connection, and a waiting EventSource takes it.
    tls_page.evaluate("window.sources[window.opened[0]].close()")
    wait_for(tls_page, "n => window.opened.length === n", BROWSER_LIMIT + 1)
    assert tls_page.evaluate("window.opened[window.opened.length - 1]") not in opened
    wait_open_streams(gateway, BROWSER_LIMIT)


def _probe() -> str:
    return f"/healthz?probe={uuid.uuid4().hex[:12]}"


def test_the_gateway_logs_the_clients_address_through_the_proxy_and_ignores_a_forged_one_from_anyone_else(
    behind_nginx,
):
    nginx, gateway = behind_nginx
    through, straight = _probe(), _probe()
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDRESS, verify=False)
    with httpx.Client(transport=transport, timeout=5) as client:
        assert client.get(nginx.url + through, headers={"X-Forwarded-For": FORGED}).status_code == 200
    assert httpx.get(gateway.url + straight, headers={"X-Forwarded-For": FORGED}, timeout=5).status_code == 200

    log = gateway.log()
    assert f'{CLIENT_ADDRESS}:0 - "GET {through} HTTP/1.1" 200' in log, log[-2000:]
    assert re.search(rf'127\.0\.0\.1:[1-9]\d* - "GET {re.escape(straight)} HTTP/1\.1" 200', log), log[-2000:]
    assert FORGED not in log


def test_caddy_passes_the_clients_own_address_not_a_forged_one(behind_caddy):
    caddy, gateway = behind_caddy
    through = _probe()
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDRESS, verify=False)
    with httpx.Client(transport=transport, timeout=5) as client:
        assert client.get(caddy.url + through, headers={"X-Forwarded-For": FORGED}).status_code == 200
    log = gateway.log()
    assert f'{CLIENT_ADDRESS}:0 - "GET {through} HTTP/1.1" 200' in log, log[-2000:]
    assert FORGED not in log


def test_through_the_proxy_each_event_arrives_as_published_and_uncompressed(behind_proxy, channel):
    proxy, gateway = behind_proxy
    with httpx.Client(base_url=proxy.url, verify=False, timeout=5, headers={"Accept-Encoding": "gzip"}) as client:
        if isinstance(proxy, TlsNginxProcess):  # its http block compresses, so the shipped `gzip off` is what counts
            assert client.get("/web/").headers.get("content-encoding") == "gzip"
        with client.stream("GET", f"/events/{channel}") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in response.headers
            # Raw, so that a compressed stream would show. Each read is bounded by the client's timeout; the whole,
            # since heartbeats keep coming, by a deadline.
            chunks = response.iter_raw()
            received = next(chunks)
            assert received.startswith(b": connected")
            publish(gateway, [channel])
            deadline = time.monotonic() + 5
            while b"data: to " not in received and time.monotonic() < deadline:
                received += next(chunks)
    assert f"data: to {channel}\n\n".encode() in received


def test_the_shipped_caddyfile_streams_each_event_at_once_over_http1_to_the_gateway_uncompressed(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    command = [caddy_binary(), "adapt", "--config", str(SHIPPED_CADDYFILE), "--adapter", "caddyfile"]
    adapted = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30, check=True)
    assert "warn" not in adapted.stderr, adapted.stderr  # Caddy warns of an unformatted file, or a needless line
    handlers = list(_handlers(json.loads(adapted.stdout)))
    (proxy,) = [handler for handler in handlers if handler["handler"] == "reverse_proxy"]
    assert proxy["flush_interval"] == -1
    assert proxy["transport"]["versions"] == ["1.1"]
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:8000"}]
    assert "encode" not in {handler["handler"] for handler in handlers}


def _handlers(config: object) -> Iterator[dict]:
    """Every handler anywhere in an adapted Caddy config, subroutes included."""
    if isinstance(config, dict):
        if "handler" in config:
            yield config
        for value in config.values():
            yield from _handlers(value)
    elif isinstance(config, list):
        for value in config:
            yield from _handlers(value)

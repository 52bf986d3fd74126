"""A real browser's EventSource against real gateways: headless Debian Chromium, driven by Playwright's sync API.

The tests are plain functions (pytest-asyncio runs in auto mode, and the sync API refuses a running loop). A page
on the gateway's own origin (``/healthz``) opens same-origin streams; a tiny page server on another port stands in
for a cross-origin web app.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page

from gateway.cursor import channel_set, parse_cursor, parse_stream_id
from gateway.security.tokens import mint
from tests.servers import GatewayProcess, RedisProcess

SECRET = "browser-tests-secret-0123456789abcdef"
WAIT_MS = 10_000

# Opens window.source and records what it dispatches; "gap" and the given types are listened for too.
LISTEN = """([url, types, withCredentials]) => {
  window.received = []; window.errors = []; window.opens = [];
  const source = new EventSource(url, {withCredentials});
  const record = (e) => window.received.push({type: e.type, data: e.data, lastEventId: e.lastEventId});
  for (const type of ["message", "gap", ...types]) source.addEventListener(type, record);
  source.onopen = () => window.opens.push(source.readyState);
  source.onerror = () => window.errors.push(source.readyState);
  window.source = source;
}"""
PAGE = "<!doctype html><meta charset='utf-8'><title>cross-origin test page</title>"


@pytest.fixture(scope="module")
def trimming_gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url, "--buffer-maxlen", "10", "--key-prefix", "brw:").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def auth_gateway(redis_server: RedisProcess, page_origin: str) -> Iterator[GatewayProcess]:
    env = {
        "SSE_GATEWAY_JWT_SECRET": SECRET,
        "SSE_GATEWAY_CORS_ORIGINS": page_origin,
        "SSE_GATEWAY_CORS_CREDENTIALS": "true",
    }
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


def listen(page: Page, url: str, *types: str, credentials: bool = False) -> None:
    page.evaluate(LISTEN, [url, list(types), credentials])


def wait_for(page: Page, condition: str, arg: object = None) -> None:
    page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)


def wait_received(page: Page, count: int) -> list[dict]:
    wait_for(page, "n => window.received.length >= n", count)
    return page.evaluate("window.received")


def publish(base_url: str, channel: str, data: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{base_url}/publish/{channel}", content=data, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def statuses(gateway: GatewayProcess, path: str) -> list[int]:
    """The status of every request the gateway logged for ``path`` (any query string)."""
    pattern = re.compile(rf'"GET {re.escape(path)}(?:\?\S*)? HTTP/[\d.]+" (\d{{3}})')
    return [int(status) for status in pattern.findall(gateway.log())]


def messages(datas: list[str], ids: list[str], event_type: str = "message") -> list[dict]:
    return [{"type": event_type, "data": d, "lastEventId": i} for d, i in zip(datas, ids, strict=True)]


def test_event_source_receives_published_events_with_their_ids(page, gateway, channel):
    page.goto(gateway.url + "/healthz")
    listen(page, f"/events/{channel}")
    wait_for(page, "() => window.opens.length === 1")
    datas = ["first", "two\nlines", "ünïcödé ✓"]
    ids = [publish(gateway.url, channel, data) for data in datas]
    assert wait_received(page, 3) == messages(datas, ids)


def test_browser_reconnects_by_itself_after_gateway_sigkill_and_gets_every_missed_event_once(
    page, own_gateway, redis_server, channel
):
    page.goto(own_gateway.url + "/healthz")
    listen(page, f"/events/{channel}")
    wait_for(page, "() => window.opens.length === 1")
    ids = [publish(own_gateway.url, channel, f"before-{i}") for i in range(2)]
    wait_received(page, 2)

    own_gateway.kill()
    wait_for(page, "() => window.errors.length >= 1")
    ids += [redis_server.publish_with_script(channel, f"missed-{i}") for i in range(3)]
    own_gateway.start()
    wait_received(page, 5)
    ids.append(publish(own_gateway.url, channel, "live"))

    datas = ["before-0", "before-1", "missed-0", "missed-1", "missed-2", "live"]
    assert wait_received(page, 6) == messages(datas, ids)
    assert page.evaluate("window.source.readyState") == 1
    assert len(page.evaluate("window.opens")) >= 2, "the browser reconnected by itself"


def test_resume_after_trim_delivers_exactly_one_gap_event(page, trimming_gateway, redis_server, channel):
    url = trimming_gateway.url
    page.goto(url + "/healthz")
    listen(page, f"/events/{channel}")
    wait_for(page, "() => window.opens.length === 1")
    publish(url, channel, "seen")
    resume_at = wait_received(page, 1)[0]["lastEventId"]
    page.evaluate("window.source.close()")

    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(250):
            assert client.post(f"/publish/{channel}", content=f"m{i}").status_code == 201
    kept = [entry_id.decode() for entry_id, _ in redis_server.client().xrange(f"brw:{{{channel}}}:buffer")]
    assert parse_stream_id(kept[0]) > parse_stream_id(resume_at) and len(kept) < 250, "the buffer was not trimmed"

    listen(page, f"/events/{channel}?lastEventId={quote(resume_at)}")
    replayed = wait_received(page, 1 + len(kept))
    live_id = publish(url, channel, "live")
    events = wait_received(page, 2 + len(kept))

    gaps = [event for event in events if event["type"] == "gap"]
    assert len(gaps) == 1 and events[0]["type"] == "gap", "one gap, before the replay"
    assert json.loads(gaps[0]["data"]) == {"channel": channel, "requested": resume_at, "first_available": kept[0]}
    assert [event["lastEventId"] for event in replayed[1:]] == kept
    assert events[-1] == {"type": "message", "data": "live", "lastEventId": live_id}
    assert len(events) == 2 + len(kept)


def test_multi_channel_stream_resumes_every_channel_exactly_after_gateway_restart(
    page, own_gateway, redis_server, channel
):
    a, b = f"{channel}-a", f"{channel}-b"
    page.goto(own_gateway.url + "/healthz")
    listen(page, f"/events?channel={a}&channel={b}", a, b)
    wait_for(page, "() => window.opens.length === 1")
    published = [(a, "a0", publish(own_gateway.url, a, "a0")), (b, "b0", publish(own_gateway.url, b, "b0"))]
    wait_received(page, 2)

    own_gateway.kill()
    wait_for(page, "() => window.errors.length >= 1")
    for name, data in [(a, "a1"), (b, "b1"), (a, "a2")]:
        published.append((name, data, redis_server.publish_with_script(name, data)))
    own_gateway.start()
    wait_received(page, 5)
    published.append((b, "b2", publish(own_gateway.url, b, "b2")))

    events = wait_received(page, 6)
    assert len(events) == 6
    for name in (a, b):
        assert [e["data"] for e in events if e["type"] == name] == [d for n, d, _ in published if n == name]
    last_ids = {name: parse_stream_id(i) for name, _, i in published}  # the newest id of each channel
    assert parse_cursor(events[-1]["lastEventId"], channel_set([a, b])) == last_ids
    assert len(page.evaluate("window.opens")) >= 2


def test_cross_origin_page_subscribes_with_cookie_and_credentials(page, page_origin, auth_gateway, channel):
    token = mint(subscribe=[channel], publish=[channel], secret=SECRET)
    page.goto(page_origin + "/")
    page.evaluate("token => { document.cookie = 'sse_token=' + token + '; path=/'; }", token)
    listen(page, f"{auth_gateway.url}/events/{channel}", credentials=True)
    wait_for(page, "() => window.opens.length === 1")
    event_id = publish(auth_gateway.url, channel, "with cookie", token)
    assert wait_received(page, 1) == messages(["with cookie"], [event_id])


def test_cross_origin_page_subscribes_with_access_token_query(page, page_origin, auth_gateway, channel):
    token = mint(subscribe=[channel], publish=[channel], secret=SECRET)
    page.goto(page_origin + "/")
    listen(page, f"{auth_gateway.url}/events/{channel}?access_token={token}")
    wait_for(page, "() => window.opens.length === 1")
    event_id = publish(auth_gateway.url, channel, "with query token", token)
    assert wait_received(page, 1) == messages(["with query token"], [event_id])
    assert token not in auth_gateway.log(), "the access log redacts ?access_token="


def test_cross_origin_stream_without_cors_is_refused_by_the_browser(page, page_origin, gateway, channel):
    page.goto(page_origin + "/")
    listen(page, f"{gateway.url}/events/{channel}")
    wait_for(page, "() => window.errors.length >= 1 && window.source.readyState === 2")
    # CLOSED is final (a closed EventSource never dispatches again), so nothing can arrive after this.
    assert page.evaluate("[window.received, window.opens, window.errors]") == [[], [], [2]]
    assert statuses(gateway, f"/events/{channel}")[:1] == [200], "the gateway answered; the browser refused"


@pytest.mark.parametrize("credential, status", [("none", 401), ("other channel", 403)])
def test_refused_stream_is_closed_and_not_retried(page, auth_gateway, channel, credential, status):
    url = f"/events/{channel}"
    if credential == "other channel":
        url += "?access_token=" + mint(subscribe=[channel + "-other"], secret=SECRET)
    page.goto(auth_gateway.url + "/healthz")
    listen(page, url)
    wait_for(page, "() => window.errors.length >= 1")
    # The error came with the source CLOSED (a browser that retries reports CONNECTING), and CLOSED is final.
    assert page.evaluate("[window.errors, window.source.readyState, window.received]") == [[2], 2, []]
    assert statuses(auth_gateway, f"/events/{channel}") == [status]

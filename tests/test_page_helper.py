"""The page helper, clients/web/sse-gateway.js, in headless Chromium against real gateways.

Each test imports the module from the gateway's own origin (``/web/sse-gateway.js``) into a page of that origin and
records what the helper hands to its callbacks. An init script counts every EventSource and fetch the page makes, so
a test can say how many connections the helper opened. Playwright's sync API, in plain functions, as in
tests/test_browser.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import Page

from gateway.cursor import channel_set, parse_cursor, parse_stream_id
from gateway.security.tokens import mint
from tests.proxies import NginxProcess
from tests.servers import GatewayProcess, RedisProcess, wait_until

SECRET = "page-helper-tests-secret-0123456789abcdef"
WAIT_MS = 10_000
RETRY_MS = 200  # GatewayProcess sets SSE_GATEWAY_RETRY_MS=200

# Runs before the page's own scripts: every EventSource and fetch the page makes is kept in window.sources and
# window.fetches.
INSTRUMENT = """
window.sources = [];
window.fetches = [];
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(...args) { super(...args); window.sources.push(this); }
};
const nativeFetch = window.fetch;
window.fetch = (...args) => { window.fetches.push(String(args[0])); return nativeFetch(...args); };
"""

# subscribe(options) as window.feeds[name]: its handle, and what its callbacks were given. `tokens` (a list) becomes
# a token function that returns them one by one, the last one from then on. `ticketsFor` (a JWT) becomes a ticket
# function as a page would write it, the JWT sent to POST /tickets in a header; window.ticketCalls counts its calls.
SUBSCRIBE = """async ([name, options]) => {
  const { subscribe } = await import("/web/sse-gateway.js");
  if (options.tokens) {
    const tokens = options.tokens;
    let calls = 0;
    options.token = async () => tokens[Math.min(calls++, tokens.length - 1)];
    delete options.tokens;
  }
  if (options.ticketsFor) {
    const jwt = options.ticketsFor;
    window.ticketCalls = 0;
    options.ticket = async (channels) => {
      window.ticketCalls += 1;
      const headers = { Authorization: "Bearer " + jwt, "Content-Type": "application/json" };
      const answer = await fetch("/tickets", { method: "POST", headers, body: JSON.stringify({ channels }) });
      return (await answer.json()).ticket;
    };
    delete options.ticketsFor;
  }
  const got = { events: [], gaps: [], states: [] };
  window.feeds = window.feeds || {};
  window.feeds[name] = got;
  got.handle = subscribe(options, {
    onEvent: (event) => got.events.push(event),
    onGap: (channel, info) => got.gaps.push({ channel, info }),
    onState: (state, detail) => got.states.push({ state, ...detail }),
  });
}"""


@pytest.fixture(scope="module")
def trimming_gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url, "--buffer-maxlen", "10", "--key-prefix", "helper:").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def auth_gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url, env={"SSE_GATEWAY_JWT_SECRET": SECRET}).start()
    yield process
    process.stop()


def open_page(page: Page, gateway: GatewayProcess) -> None:
    page.add_init_script(INSTRUMENT)
    page.goto(gateway.url + "/healthz")


def subscribe(page: Page, name: str = "main", **options: object) -> None:
    page.evaluate(SUBSCRIBE, [name, options])


def wait_for(page: Page, condition: str, arg: object = None) -> None:
    page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)


def wait_state(page: Page, state: str, name: str = "main") -> None:
    wait_for(page, "([name, state]) => window.feeds[name].handle.state === state", [name, state])


def wait_events(page: Page, count: int, name: str = "main") -> list[dict]:
    wait_for(page, "([name, n]) => window.feeds[name].events.length >= n", [name, count])
    return page.evaluate("name => window.feeds[name].events", name)


def got(page: Page, what: str, name: str = "main") -> list[dict]:
    return page.evaluate("([name, what]) => window.feeds[name][what]", [name, what])


def statuses(gateway: GatewayProcess, path: str) -> list[int]:
    """The status of every GET the gateway logged for ``path`` (any query string)."""
    pattern = re.compile(rf'"GET {re.escape(path)}(?:\?\S*)? HTTP/[\d.]+" (\d{{3}})')
    return [int(status) for status in pattern.findall(gateway.log())]


def publish(base_url: str, channel: str, data: str, *, event: str | None = None, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {"event": event} if event else {}
    response = httpx.post(f"{base_url}/publish/{channel}", content=data, params=params, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_events_of_several_channels_over_one_event_source_arrive_with_their_channel_type_and_data(
    page, gateway, channel
):
    a, b = f"{channel}-a", f"{channel}-b"
    open_page(page, gateway)
    subscribe(page, channels=[a, b], types=["trade", "price:up"])
    wait_state(page, "live")
    published = [
        (a, "message", "a plain one", publish(gateway.url, a, "a plain one")),
        (b, "trade", "two\nlines", publish(gateway.url, b, "two\nlines", event="trade")),
        (a, "price:up", "<b>not html</b>", publish(gateway.url, a, "<b>not html</b>", event="price:up")),
    ]
    events = wait_events(page, 3)

    assert [(e["channel"], e["type"], e["data"]) for e in events] == [(c, t, d) for c, t, d, _ in published]
    newest = {name: parse_stream_id(i) for name, _, _, i in published}
    assert parse_cursor(events[-1]["id"], channel_set([a, b])) == newest, "the id is the stream's cursor"
    assert page.evaluate("window.feeds.main.handle.lastEventId") == events[-1]["id"]
    assert page.evaluate("window.sources.map(s => s.url)") == [
        f"{gateway.url}/events?channel={a}&channel={b}&start_event=1"
    ]


def test_a_single_channel_is_streamed_from_its_path_and_its_types_arrive_by_name(page, gateway, channel):
    open_page(page, gateway)
    subscribe(page, channels=[channel, channel], types=["trade"])
    wait_state(page, "live")
    ids = [publish(gateway.url, channel, "plain"), publish(gateway.url, channel, "typed", event="trade")]
    events = wait_events(page, 2)

    assert events == [
        {"channel": channel, "type": "message", "data": "plain", "id": ids[0]},
        {"channel": channel, "type": "trade", "data": "typed", "id": ids[1]},
    ]
    assert page.evaluate("window.sources.map(s => s.url)") == [f"{gateway.url}/events/{channel}?start_event=1"]


def test_resume_past_a_trimmed_buffer_calls_on_gap_once_then_hands_over_the_rest(
    page, trimming_gateway, redis_server, channel
):
    a, b = f"{channel}-a", f"{channel}-b"
    url = trimming_gateway.url
    open_page(page, trimming_gateway)
    subscribe(page, "first", channels=[a, b])
    wait_state(page, "live", "first")
    seen_a = publish(url, a, "a seen")
    publish(url, b, "b seen")
    wait_events(page, 2, "first")
    cursor = page.evaluate("window.feeds.first.handle.lastEventId")
    page.evaluate("window.feeds.first.handle.close()")

    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(250):
            assert client.post(f"/publish/{a}", content=f"m{i}").status_code == 201
    publish(url, b, "b after")
    kept = [entry_id.decode() for entry_id, _ in redis_server.client().xrange(f"helper:{{{a}}}:buffer")]
    assert parse_stream_id(kept[0]) > parse_stream_id(seen_a) and len(kept) < 250, "the buffer was not trimmed"

    subscribe(page, "resumed", channels=[a, b], lastEventId=cursor)
    wait_events(page, len(kept) + 1, "resumed")
    publish(url, a, "live")
    events = wait_events(page, len(kept) + 2, "resumed")

    assert got(page, "gaps", "resumed") == [
        {"channel": a, "info": {"channel": a, "requested": seen_a, "first_available": kept[0]}}
    ]
    replayed = [f"m{i}" for i in range(250 - len(kept), 250)]  # the newest, which the buffer kept
    assert [e["data"] for e in events if e["channel"] == a] == [*replayed, "live"]
    assert [e["data"] for e in events if e["channel"] == b] == ["b after"]
    assert len(events) == len(kept) + 2


def test_states_around_a_gateway_restart_and_every_event_arrives_once(page, own_gateway, redis_server, channel):
    a, b = f"{channel}-a", f"{channel}-b"
    open_page(page, own_gateway)
    subscribe(page, channels=[a, b])
    # Live, and the retry time read from the stream's X-SSE-Retry header (the helper's default is 3000).
    wait_for(page, "r => window.feeds.main.handle.state === 'live' && window.feeds.main.handle.retryMs === r", RETRY_MS)
    published = [(a, "a0", publish(own_gateway.url, a, "a0")), (b, "b0", publish(own_gateway.url, b, "b0"))]
    wait_events(page, 2)

    own_gateway.kill()
    wait_state(page, "retrying")
    for name, data in [(a, "a1"), (b, "b1"), (a, "a2")]:
        published.append((name, data, redis_server.publish_with_script(name, data)))
    own_gateway.start()
    wait_state(page, "live")
    published.append((b, "b2", publish(own_gateway.url, b, "b2")))
    events = wait_events(page, 6)

    assert got(page, "states") == [
        {"state": "connecting"},
        {"state": "live"},
        {"state": "retrying", "retryMs": RETRY_MS},
        {"state": "live"},
    ]
    assert len(events) == 6
    for name in (a, b):
        assert [e["data"] for e in events if e["channel"] == name] == [d for n, d, _ in published if n == name]
    newest = {name: parse_stream_id(i) for name, _, i in published}
    assert parse_cursor(page.evaluate("window.feeds.main.handle.lastEventId"), channel_set([a, b])) == newest


def test_behind_a_proxy_that_answers_502_the_helper_reconnects_itself_from_the_last_id(
    page, own_gateway, redis_server, channel
):
    # A browser's EventSource gives up for good on the proxy's 502 while the gateway is down; the helper does not.
    nginx = NginxProcess([own_gateway.port]).start()
    try:
        a, b = f"{channel}-a", f"{channel}-b"
        page.add_init_script(INSTRUMENT)
        page.goto(nginx.url + "/healthz")
        subscribe(page, channels=[a, b])
        wait_state(page, "live")
        published = [(a, "a0", publish(nginx.url, a, "a0")), (b, "b0", publish(nginx.url, b, "b0"))]
        cursor = wait_events(page, 2)[-1]["id"]

        own_gateway.kill()
        wait_for(page, "() => window.sources.length >= 2", None)  # the browser gave up; the helper opened another
        for name, data in [(a, "a1"), (b, "b1")]:
            published.append((name, data, redis_server.publish_with_script(name, data)))
        own_gateway.start()
        wait_state(page, "live")
        published.append((a, "a2", publish(nginx.url, a, "a2")))
        events = wait_events(page, 5)
        states = [s["state"] for s in got(page, "states")]
        urls = page.evaluate("window.sources.map(s => s.url)")
    finally:
        nginx.stop()

    assert states == ["connecting", "live", "retrying", "live"]
    assert len(events) == 5
    for name in (a, b):
        assert [e["data"] for e in events if e["channel"] == name] == [d for n, d, _ in published if n == name]
    assert all(f"&lastEventId={quote(cursor)}&" in url for url in urls[1:]), urls


def test_a_stream_the_helper_opens_again_before_any_event_resumes_from_where_the_first_one_started(
    page, own_gateway, redis_server, channel
):
    # A quiet channel: the first stream ends (the proxy's 502) before any event. The `:start` event told the helper
    # its starting position, so what was published while the gateway was down still arrives.
    nginx = NginxProcess([own_gateway.port]).start()
    try:
        page.add_init_script(INSTRUMENT)
        page.goto(nginx.url + "/healthz")
        subscribe(page, channels=[channel])
        wait_state(page, "live")
        own_gateway.kill()
        wait_for(page, "() => window.sources.length >= 2", None)
        published = [redis_server.publish_with_script(channel, "while down")]
        own_gateway.start()
        wait_state(page, "live")
        published.append(publish(nginx.url, channel, "after"))
        events = wait_events(page, 2)
    finally:
        nginx.stop()
    assert [(e["data"], e["id"]) for e in events] == list(zip(["while down", "after"], published, strict=True))


@pytest.mark.parametrize(
    "credential, status, error", [("expired", 401, "unauthorized"), ("other channel", 403, "forbidden")]
)
def test_a_refused_stream_is_closed_with_its_status_and_never_retried(
    page, auth_gateway, channel, credential, status, error
):
    if credential == "expired":
        token = mint(subscribe=[channel], ttl=-60, secret=SECRET)
    else:
        token = mint(subscribe=[channel + "-other"], secret=SECRET)
    page.clock.install()  # the page's timers run when the test says so
    open_page(page, auth_gateway)
    subscribe(page, channels=[channel], token=token)
    wait_state(page, "closed")
    # A minute of the page's time: any retry the helper had scheduled would run now.
    page.clock.run_for(60_000)

    connecting, closed = got(page, "states")
    assert connecting == {"state": "connecting"}
    assert [closed["state"], closed["reason"], closed["status"], closed["error"]["error"]] == [
        "closed", "refused", status, error
    ]  # fmt: skip
    assert page.evaluate("window.sources.map(s => s.readyState)") == [2], "one EventSource, closed for good"
    assert len(page.evaluate("window.fetches")) == 1, "one request to learn why"
    assert statuses(auth_gateway, f"/events/{channel}") == [status, status]


def test_an_expired_token_from_a_token_function_is_replaced_and_the_stream_resumes(page, auth_gateway, channel):
    publisher = mint(publish=[channel], secret=SECRET)
    short = mint(subscribe=[channel], ttl=3, secret=SECRET)
    long = mint(subscribe=[channel], secret=SECRET)
    open_page(page, auth_gateway)
    subscribe(page, channels=[channel], tokens=[short, long])
    wait_state(page, "live")
    publish(auth_gateway.url, channel, "before", token=publisher)
    wait_events(page, 1)

    # The gateway ends the stream at the token's expiry; the browser's reconnect is refused with 401.
    wait_for(page, "() => window.feeds.main.states.some(s => s.state === 'retrying')")
    publish(auth_gateway.url, channel, "during", token=publisher)
    wait_state(page, "live")
    publish(auth_gateway.url, channel, "after", token=publisher)
    events = wait_events(page, 3)

    assert [e["data"] for e in events] == ["before", "during", "after"]
    assert [s["state"] for s in got(page, "states")] == ["connecting", "live", "retrying", "live"]
    urls = page.evaluate("window.sources.map(s => s.url)")
    assert [short in urls[0], long in urls[1], "lastEventId=" in urls[1]] == [True, True, True]


def test_close_reports_closed_and_no_event_arrives_after_it(page, gateway, channel):
    open_page(page, gateway)
    subscribe(page, channels=[channel])
    wait_state(page, "live")
    publish(gateway.url, channel, "before")
    wait_events(page, 1)

    page.evaluate("window.feeds.main.handle.close()")
    assert got(page, "states")[-1] == {"state": "closed", "reason": "close"}
    assert page.evaluate("window.sources.map(s => s.readyState)") == [2], "CLOSED is final: it dispatches no more"
    # A second subscriber of the channel gets the next event; the closed one does not.
    subscribe(page, "control", channels=[channel])
    wait_state(page, "live", "control")
    publish(gateway.url, channel, "after")
    wait_events(page, 1, "control")
    assert [e["data"] for e in got(page, "events")] == ["before"]
    assert got(page, "states")[-1] == {"state": "closed", "reason": "close"}


def test_the_web_page_shows_the_feed_through_the_helper_as_text(page, gateway, channel):
    page.goto(gateway.url + "/web/")
    page.fill("#channels", f"{channel}-a, {channel}-b")
    page.fill("#types", "trade")
    page.click("#open")
    page.wait_for_selector("#state[data-state='live']", timeout=WAIT_MS)
    publish(gateway.url, f"{channel}-b", "<b>bold?</b>", event="trade")
    entry = page.wait_for_selector("#log li.event", timeout=WAIT_MS)

    assert f"[{channel}-b trade]" in entry.inner_text()
    assert "<b>bold?</b>" in entry.inner_text() and entry.query_selector("b") is None, "data is shown as text"
    assert page.inner_text("#count") == "1"
    page.click("#close")
    page.wait_for_selector("#state[data-state='closed']", timeout=WAIT_MS)


def test_a_ticket_function_keeps_the_token_out_of_urls_and_an_expired_ticket_is_replaced_without_loss(
    page, redis_server, channel
):
    env = {"SSE_GATEWAY_JWT_SECRET": SECRET, "SSE_GATEWAY_TICKET_TTL": "1"}
    gateway = GatewayProcess(redis_server.url, env=env).start()
    try:
        jwt = mint(subscribe=[channel], secret=SECRET)
        publisher = mint(publish=[channel], secret=SECRET)
        open_page(page, gateway)
        subscribe(page, channels=[channel], ticketsFor=jwt)
        wait_state(page, "live")
        published = [publish(gateway.url, channel, "before", token=publisher)]
        wait_events(page, 1)
        first = page.evaluate("window.sources[0].url")
        ticket = parse_qs(urlsplit(first).query)["ticket"][0]

        # Down until the ticket has expired; the browser's reconnect to the gateway back up is then refused (401),
        # and the helper asks for a new ticket and resumes from the last id.
        gateway.kill()
        wait_state(page, "retrying")
        published.append(redis_server.publish_with_script(channel, "during"))
        key = "sse:ticket:" + hashlib.sha256(ticket.encode()).hexdigest()
        wait_until(lambda: not redis_server.client().exists(key), what="the ticket to expire")
        gateway.start()
        wait_state(page, "live")
        published.append(publish(gateway.url, channel, "after", token=publisher))
        events = wait_events(page, 3)
        urls = page.evaluate("window.sources.map(s => s.url)")
        calls = page.evaluate("window.ticketCalls")
        log = gateway.log()
    finally:
        gateway.stop()

    assert [(e["data"], e["id"]) for e in events] == list(zip(["before", "during", "after"], published, strict=True))
    assert calls == 2 and len(urls) == 2
    assert all(jwt not in url and "access_token" not in url for url in urls)
    assert f"lastEventId={quote(published[0])}" in urls[1]
    assert jwt not in log and ticket not in log and "ticket=[redacted]" in log

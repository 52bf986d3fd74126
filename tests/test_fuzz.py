"""Fuzzing: the cursor parser, and the HTTP contract over a real uvicorn process.

Every fuzzed request gets exactly the answer the README's rules give (200, 201, 400, 404, 405 or 413, errors as
``{"error": <documented code>, "detail": <str>}``), never a 5xx, the server stays up, and every publish it
acknowledges is in Redis with exactly the bytes sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.cursor import channel_set, channel_set_tag, format_cursor, format_position, format_stream_id, parse_cursor
from gateway.errors import BadRequest

MAX = 2**64 - 1
MAX_BODY = 1024 * 1024
MAX_CHANNELS = 16
ERROR_CODES = {
    400: {"bad_channel", "no_channel", "too_many_channels", "bad_cursor", "bad_event_type", "bad_body"},
    404: {"not_found"},
    405: {"method_not_allowed"},
    413: {"body_too_large"},
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# The README's rules, written out again here rather than imported, so the gateway is checked against its documentation.
VALID_CHANNEL = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def channel_ok(name: str) -> bool:
    return VALID_CHANNEL.fullmatch(name) is not None and name != "gap"


def event_type_ok(event: str) -> bool:
    return 0 < len(event) <= 128 and not re.search(r"[\r\n\x00]", event) and event != "gap"


# -- strategies ------------------------------------------------------------------------------------------------

valid_channels = st.from_regex(VALID_CHANNEL, fullmatch=True).filter(lambda name: name != "gap")
channel_names = st.one_of(
    valid_channels,
    st.text(max_size=70),
    st.sampled_from(
        ["gap", "", ".", "..", "...", "a/b", "/", "%", "%2F", "a\x00", "é", "A" * 64, "A" * 65, "stocks\n",
         "a\nb", "a\rb", " a", "a ", "a?b", "a#b", "a&channel=b", "a+b", "{a}", "a\u2028b"]
    ),
)  # fmt: skip
stream_ids = st.tuples(st.integers(0, 2**65), st.integers(0, 2**65)).map(format_stream_id)
position_texts = st.from_regex(r"[0-9a-z]{0,14}(~[0-9a-z]{0,14})?", fullmatch=True)


@st.composite
def cursor_texts(draw: st.DrawFn, channels: tuple[str, ...]) -> str:
    """Text that is, or nearly is, a Last-Event-ID for ``channels``: ids, composite cursors, and anything at all."""
    kind = draw(st.sampled_from(["text", "stream_id", "digits", "cursor", "alphabet"]))
    if kind == "text":
        return draw(st.text(max_size=60))
    if kind == "stream_id":
        return draw(stream_ids)
    if kind == "digits":
        return draw(st.from_regex(r"[0-9]{0,22}-[0-9]{0,22}", fullmatch=True))
    if kind == "alphabet":
        return draw(st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyz_.~-+", max_size=40))
    tag = draw(st.one_of(st.just(channel_set_tag(channels)), st.from_regex(r"[0-9a-z]{0,8}", fullmatch=True)))
    count = draw(st.integers(max(0, len(channels) - 1), len(channels) + 1))
    positions = draw(st.lists(st.one_of(position_texts, st.text(max_size=6)), min_size=count, max_size=count))
    return tag + draw(st.sampled_from(["_", "", "-", "__"])) + ".".join(positions)


# RFC 9110 field values: visible ASCII, obs-text, space and tab inside. Other control characters are refused by the
# HTTP client (h11) or by uvicorn's parser (a plain-text 400) before the gateway sees them.
header_values = st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60).map(
    lambda text: "".join(c for c in text if c == "\t" or " " <= c <= "~" or c >= "\x80").strip(" \t")
)


@st.composite
def stream_requests(draw: st.DrawFn) -> dict:
    form = draw(st.sampled_from(["path", "query"]))
    if form == "path":
        names = [draw(st.one_of(valid_channels, channel_names))]
    else:
        names = draw(
            st.one_of(
                st.lists(valid_channels, min_size=1, max_size=4),
                st.lists(valid_channels, min_size=MAX_CHANNELS - 1, max_size=MAX_CHANNELS + 2),
                st.lists(st.one_of(valid_channels, channel_names), max_size=MAX_CHANNELS + 3),
            )
        )
    known = channel_set([n for n in names if channel_ok(n)]) or ("x",)
    header = draw(st.one_of(st.none(), header_values, cursor_texts(known).map(lambda t: t.strip(" \t"))))
    if header is not None and not re.fullmatch(r"[\t\x20-\x7e\x80-\xff]*", header):
        header = None  # a cursor text with characters a header cannot carry
    query = draw(st.one_of(st.none(), st.none(), cursor_texts(known)))
    method = draw(st.sampled_from(["GET"] * 6 + ["POST", "PUT", "DELETE"]))
    return {"form": form, "names": names, "header": header, "query": query, "method": method}


def big_body(size: int, fill: str, tail: bytes) -> bytes:
    """``size`` bytes of ``fill`` ending in ``tail``: cut characters and odd tails make some of them invalid UTF-8."""
    head = (fill * size).encode()[: size - len(tail)]
    return head + tail


bodies = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300).map(str.encode),
    st.builds(
        big_body,
        st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, MAX_BODY + 5000]),
        st.sampled_from(["a", "é", "€", "😀", "line\r\n"]),
        st.one_of(st.just(b""), st.binary(max_size=3)),
    ),
)
event_types = st.one_of(
    st.none(),
    st.text(max_size=140),
    st.sampled_from(["", "gap", "trade", "a\rb", "a\nb", "a\x00b", "x" * 128, "x" * 129, "é" * 128, "😀" * 128]),
)


# -- helpers ---------------------------------------------------------------------------------------------------


def segment(name: str) -> str:
    """One path segment carrying ``name`` exactly (httpx would resolve a literal "." or ".." away)."""
    quoted = quote(name, safe="")
    return quoted.replace(".", "%2E") if name in (".", "..") else quoted


def query_string(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{key}={quote(value, safe='')}" for key, value in pairs)


def assert_documented_error(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    assert response.status_code in ERROR_CODES, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"} and isinstance(body["detail"], str), body
    assert body["error"] in ERROR_CODES[response.status_code], body
    assert (response.status_code, body["error"]) == (status, code), body


def expected_stream(request: dict) -> tuple[int, str | None, str | None]:
    """(status, error code, opening id) by the README's rules, in the order the gateway checks them."""
    names = request["names"]
    if request["method"] != "GET":
        return 405, "method_not_allowed", None
    if request["form"] == "query" and not names:
        return 400, "no_channel", None
    if not all(channel_ok(name) for name in names):
        return 400, "bad_channel", None
    channels = channel_set(names)
    if len(channels) > MAX_CHANNELS:
        return 400, "too_many_channels", None
    # The header wins when it is present and not empty.
    last_event_id = request["header"] or request["query"]
    if not last_event_id:
        return 200, None, None
    try:
        positions = parse_cursor(last_event_id, channels)
    except BadRequest:
        return 400, "bad_cursor", None
    if len(channels) == 1:
        return 200, None, format_stream_id(positions[channels[0]])
    return 200, None, format_cursor(channel_set_tag(channels), [format_position(positions[c]) for c in channels])


def opening_of(response: httpx.Response) -> bytes:
    """The stream's first frame: read until its blank line (the opening is one write), then stop reading."""
    received = b""
    for chunk in response.iter_raw():
        received += chunk
        if b"\n\n" in received or len(received) > 4096:
            break
    return received


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        yield client


# -- properties ------------------------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(channels=st.lists(valid_channels, min_size=1, max_size=MAX_CHANNELS).map(channel_set), data=st.data())
def test_parse_cursor_returns_positions_or_raises_bad_cursor(channels: tuple[str, ...], data: st.DataObject) -> None:
    text = data.draw(st.one_of(st.text(), cursor_texts(channels)), label="text")
    try:
        positions = parse_cursor(text, channels)
    except BadRequest as exc:
        assert (exc.code, exc.status_code) == ("bad_cursor", 400)
        assert isinstance(exc.detail, str)
        return
    assert list(positions) == list(channels)
    for ms, seq in positions.values():
        assert isinstance(ms, int) and isinstance(seq, int)
        assert 0 <= ms <= MAX and 0 <= seq <= MAX
    # What the gateway would send back as the stream's id means the same positions.
    if len(channels) == 1:
        again = format_stream_id(positions[channels[0]])
    else:
        again = format_cursor(channel_set_tag(channels), [format_position(positions[c]) for c in channels])
    assert parse_cursor(again, channels) == positions


@FUZZ
@given(stream_request=stream_requests())
def test_fuzzed_stream_requests_get_only_documented_answers(gateway, client, stream_request: dict) -> None:
    names, pairs = stream_request["names"], []
    if stream_request["form"] == "path":
        path = "/events/" + segment(names[0])
    else:
        path = "/events"
        pairs += [("channel", name) for name in names]
    if stream_request["query"] is not None:
        pairs.append(("lastEventId", stream_request["query"]))
    headers = {"Accept": "text/event-stream"}
    if stream_request["header"] is not None:
        headers["Last-Event-ID"] = stream_request["header"].encode("latin-1")
    url = gateway.url + path + (f"?{query_string(pairs)}" if pairs else "")
    status, code, opening_id = expected_stream(stream_request)

    with client.stream(stream_request["method"], url, headers=headers) as response:
        event(f"{response.status_code} {stream_request['form']}")
        if response.status_code == 200:
            assert (response.status_code, None) == (status, code), stream_request
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            opening = opening_of(response)
            assert opening.startswith(b": connected\nretry: "), opening
            if opening_id is not None:
                assert f"\nid: {opening_id}\n\n".encode() in opening, (opening, stream_request)
        else:
            response.read()
            assert_documented_error(response, status, code)
    assert client.get(gateway.url + "/healthz").json() == {"status": "ok"}


@FUZZ
@given(
    name=st.one_of(valid_channels, channel_names),
    event_type=event_types,
    body=bodies,
    chunked=st.booleans(),
    method=st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE"]),
)
def test_fuzzed_publishes_get_only_documented_answers_and_lose_nothing(
    gateway, redis_server, client, name: str, event_type: str | None, body: bytes, chunked: bool, method: str
) -> None:
    url = gateway.url + "/publish/" + segment(name)
    if event_type is not None:
        url += "?" + query_string([("event", event_type)])
    # A generator makes httpx send the body chunked, with no Content-Length: the limit is then found while reading.
    content = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    response = client.request(method, url, content=content)
    event(f"{response.status_code} {'large' if len(body) >= MAX_BODY - 1 else 'small'}")

    try:
        body.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    if method != "POST":
        assert_documented_error(response, 405, "method_not_allowed")
    elif not channel_ok(name):
        assert_documented_error(response, 400, "bad_channel")
    elif event_type is not None and not event_type_ok(event_type):
        assert_documented_error(response, 400, "bad_event_type")
    elif len(body) > MAX_BODY:
        assert_documented_error(response, 413, "body_too_large")
    elif not utf8:
        assert_documented_error(response, 400, "bad_body")
    else:
        assert response.status_code == 201, response.text
        answer = response.json()
        assert answer["channel"] == name
        stored = redis_server.client().xrange(f"sse:{{{name}}}:buffer", answer["id"], answer["id"])
        assert len(stored) == 1, f"acknowledged {answer['id']} on {name!r} but it is not in Redis"
        (entry_id, fields) = stored[0]
        assert entry_id.decode() == answer["id"]
        assert fields[b"d"] == body
        assert fields[b"e"] == (event_type or "").encode()
    assert client.get(gateway.url + "/healthz").json() == {"status": "ok"}


# -- what the fuzzing found, pinned ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["\n", "\nb"])
def test_channel_name_with_a_newline_is_400_bad_channel_not_another_channel(
    gateway, redis_server, client, channel, suffix
):
    """Starlette's ``{channel:path}`` is ``.*`` then ``$``: it stops at a newline, and ``$`` matches before a final
    one, so ``/publish/stocks%0A`` was published to ``stocks`` and ``/events/stocks%0Ab`` was a 404."""
    name = channel + suffix
    published = client.post(gateway.url + "/publish/" + segment(name), content=b"x")
    with client.stream("GET", gateway.url + "/events/" + segment(name)) as subscribed:
        if subscribed.status_code != 200:
            subscribed.read()
    assert_documented_error(published, 400, "bad_channel")
    assert_documented_error(subscribed, 400, "bad_channel")
    assert redis_server.client().exists(f"sse:{{{channel}}}:buffer") == 0


@pytest.mark.parametrize("single", [True, False])
def test_largest_valid_last_event_id_is_refused_or_streams_not_a_stream_that_ends_at_once(
    gateway, client, channel, single
):
    """``18446744073709551615-18446744073709551615`` parses, but ``XRANGE key (<that> +`` is a Redis error, which the
    stream took for "Redis is unreachable": it ended at once, and a client reconnects with it for ever."""
    if single:
        params, last = {}, f"{MAX}-{MAX}"
    else:
        channels = channel_set([channel, channel + "-b"])
        params = {"channel": list(channels)}
        last = format_cursor(channel_set_tag(channels), [format_position((MAX, MAX))] * 2)
    url = gateway.url + ("/events/" + channel if single else "/events")
    with client.stream("GET", url, params=params, headers={"Last-Event-ID": last}) as response:
        if response.status_code != 200:
            response.read()
            assert_documented_error(response, 400, "bad_cursor")
            return
        received = b""
        for chunk in response.iter_raw():  # the test gateway sends a keepalive every second
            received += chunk
            if b": keepalive\n" in received:
                break
    assert b": keepalive\n" in received, f"the stream ended at once: {received!r}"

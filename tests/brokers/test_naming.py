"""gateway.brokers.naming: which channel names are allowed, and the Redis names behind a channel."""

from __future__ import annotations

import re

import pytest

from gateway.brokers.naming import Naming, channel_matches, validate_channel
from gateway.errors import BadRequest


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the text between the first '{' and the next '}'."""
    match = re.search(r"\{([^}]+)\}", key)
    assert match is not None, key
    return match[1]


@pytest.mark.parametrize("name", ["stocks", "a", "A-Z_0.9", "x" * 64, "gap2", "Gap", "...", "-", "_"])
def test_valid_channel_names_are_returned_unchanged(name: str) -> None:
    assert validate_channel(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 65, "a/b", "a:b", "a b", "{a}", "a{", "a}", "é", "ünïcode", "a\nb", "a\x00", "a\u2028", "\uff41", "*"],
)
def test_invalid_channel_names_are_bad_requests(name: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate_channel(name)
    assert caught.value.code == "bad_channel"
    assert caught.value.status_code == 400


def test_reserved_gap_channel_is_refused() -> None:
    with pytest.raises(BadRequest, match="reserved") as caught:
        validate_channel("gap")
    assert caught.value.code == "bad_channel"


def test_long_invalid_name_is_cut_in_the_message() -> None:
    with pytest.raises(BadRequest) as caught:
        validate_channel("/" * 1000)
    assert "/" * 80 in caught.value.detail
    assert "/" * 81 not in caught.value.detail


def test_default_names_spell_the_hash_tag() -> None:
    naming = Naming()
    assert naming.pubsub_channel("stocks") == "sse:{stocks}"
    assert naming.stream_key("stocks") == "sse:{stocks}:buffer"


@pytest.mark.parametrize("prefix", ["sse:", "app1:", "", "x:y:"])
@pytest.mark.parametrize("channel", ["stocks", "a.b-c_1", "x" * 64])
def test_stream_key_and_pubsub_channel_share_the_channel_hash_tag(prefix: str, channel: str) -> None:
    naming = Naming(prefix)
    assert hash_tag(naming.stream_key(channel)) == channel
    assert hash_tag(naming.pubsub_channel(channel)) == channel
    assert naming.stream_key(channel) != naming.pubsub_channel(channel)


@pytest.mark.parametrize("prefix", ["sse:", "app1:", ""])
@pytest.mark.parametrize("channel", ["stocks", "a.b-c_1", "x" * 64])
def test_channel_of_round_trips_the_pubsub_channel(prefix: str, channel: str) -> None:
    naming = Naming(prefix)
    assert naming.channel_of(naming.pubsub_channel(channel)) == channel


@pytest.mark.parametrize(
    "pubsub_channel",
    ["other:{stocks}", "sse:stocks", "sse:{stocks}:buffer", "{stocks}", "sse:{stocks", "stocks", "SSE:{stocks}"],
)
def test_channel_of_refuses_names_that_are_not_ours(pubsub_channel: str) -> None:
    assert Naming("sse:").channel_of(pubsub_channel) is None


def test_channels_of_two_prefixes_do_not_mix() -> None:
    assert Naming("a:").channel_of(Naming("b:").pubsub_channel("x")) is None
    assert Naming("a:").stream_key("x") != Naming("b:").stream_key("x")


@pytest.mark.parametrize(
    ("channel", "globs", "matches"),
    [
        ("stocks", ("stocks",), True),
        ("stocks", ("news.*", "stocks"), True),
        ("news.eu", ("news.*",), True),
        ("news", ("news.*",), False),
        ("Stocks", ("stocks",), False),  # case-sensitive
        ("stocks2", ("stocks",), False),  # the whole name
        ("a1", ("a?",), True),
        ("ab", ("a[0-9]",), False),
        ("anything", ("*",), True),
        ("stocks", (), False),
    ],
)
def test_channel_globs_match_case_sensitively_and_whole_names(channel: str, globs: tuple, matches: bool) -> None:
    assert channel_matches(channel, globs) is matches


def test_a_raw_channel_has_its_own_name_as_bare_channel_and_others_have_none() -> None:
    naming = Naming("sse:", ("stocks", "news.*"))
    assert naming.bare_channel("stocks") == "stocks"
    assert naming.bare_channel("news.eu") == "news.eu"
    assert naming.bare_channel("weather") is None
    assert naming.channel_of_bare("news.eu") == "news.eu"
    assert naming.channel_of_bare("weather") is None
    assert Naming("sse:").bare_channel("stocks") is None


@pytest.mark.parametrize("name", ["{stocks}", "sse:{stocks}", "gap", "a:b", "", "x" * 65, "é"])
def test_only_a_valid_channel_name_has_a_bare_channel_whatever_the_globs(name: str) -> None:
    naming = Naming("sse:", ("*",))
    assert naming.bare_channel(name) is None
    assert naming.channel_of_bare(name) is None


@pytest.mark.parametrize("prefix", ["", "sse:", "{", "}", "a{b}:", "x:y:"])
def test_a_bare_channel_is_never_one_of_the_gateways_own_for_any_prefix(prefix: str) -> None:
    # Else a message could be heard twice, or a bare one read as an envelope with an id.
    naming = Naming(prefix, ("*",))
    channels = ["stocks", "a", "x" * 64, "a.b-c_1", "sse", "buffer"]
    own = {naming.pubsub_channel(c) for c in channels} | {naming.stream_key(c) for c in channels}
    for channel in channels:
        bare = naming.bare_channel(channel)
        assert bare == channel and bare not in own
        assert naming.channel_of(bare) is None, "a bare message is never taken for one of the gateway's channel"
        assert naming.channel_of_bare(naming.pubsub_channel(channel)) is None

"""gateway.brokers.naming: which channel names are allowed, and the Redis names behind a channel."""

from __future__ import annotations

import re

import pytest

from gateway.brokers.naming import Naming, validate_channel
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

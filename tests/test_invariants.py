"""The invariant checker itself: it must catch every way of breaking the promise, and accept what is allowed."""

from __future__ import annotations

import json

from tests.invariants import Checker, decode_cursor
from tests.subscribers import _ChunkedBody


def _published(checker: Checker, channel: str = "a", count: int = 5) -> list[str]:
    ids = [f"100-{n}" for n in range(1, count + 1)]
    for n, event_id in enumerate(ids, start=1):
        checker.acknowledged(channel, event_id, f"m{n}")
    return ids


def _single(checker: Checker, received: list[str], start: str = "100-0"):
    log = checker.subscriber(("a",))
    log.opened(log.connecting(None), start)
    for event_id in received:
        log.take("message", event_id, f"m{int(event_id.split('-')[1])}")
    return log


def test_everything_once_and_in_order_is_clean():
    checker = Checker()
    ids = _published(checker)
    _single(checker, ids)
    report = checker.check()
    assert report.ok, report.summary()
    assert (report.published, report.delivered, report.lost) == (5, 5, 0)


def test_loss_duplicate_and_reordering_are_each_counted():
    checker = Checker()
    ids = _published(checker)
    _single(checker, [ids[0], ids[2], ids[1], ids[2]])
    report = checker.check()
    assert (report.lost, report.duplicated, report.reordered) == (2, 1, 1), report.summary()
    assert not report.ok


def test_events_before_the_start_position_are_not_expected_but_are_duplicates_if_sent():
    checker = Checker()
    ids = _published(checker)
    assert checker.check().ok
    _single(checker, [ids[1], ids[2], ids[3], ids[4]], start=ids[1])
    report = checker.check()
    assert (report.lost, report.duplicated) == (0, 1), report.summary()


def test_a_gap_covers_exactly_the_missing_events():
    checker = Checker()
    ids = _published(checker)
    log = _single(checker, [ids[0]])
    gap = {"channel": "a", "requested": ids[0], "first_available": ids[3]}
    log.take("gap", ids[0], json.dumps(gap))
    log.take("message", ids[3], "m4")
    log.take("message", ids[4], "m5")
    report = checker.check()
    assert report.ok, report.summary()
    assert (report.gaps, report.gapped, report.lost) == (1, 2, 0)


def test_a_gap_at_the_wrong_position_or_covering_nothing_is_bad():
    checker = Checker()
    ids = _published(checker)
    log = _single(checker, [ids[0], ids[1]])
    log.take("gap", ids[1], json.dumps({"channel": "a", "requested": ids[0], "first_available": ids[2]}))
    log.take("message", ids[2], "m3")
    log.take("gap", ids[2], json.dumps({"channel": "a", "requested": ids[2], "first_available": ids[3]}))
    report = checker.check()
    assert report.bad_gaps == 2, report.summary()


def test_a_missing_gap_is_a_loss():
    checker = Checker()
    ids = _published(checker)
    _single(checker, [ids[0], ids[3], ids[4]])
    assert checker.check().lost == 2


def test_unacknowledged_events_may_arrive_but_strangers_and_copies_may_not():
    checker = Checker()
    ids = _published(checker, count=2)
    checker.unacknowledged("a", "timed out", "status 503")
    log = _single(checker, ids)
    log.take("message", "100-7", "timed out")
    assert checker.check().ok and checker.check().unacked_delivered == 1
    log.take("message", "100-8", "m2")  # acknowledged as 100-2 and stored again
    log.take("message", "100-9", "nobody sent this")
    report = checker.check()
    assert (report.duplicated, report.unexpected) == (1, 1), report.summary()


def test_wrong_data_under_an_acknowledged_id_is_a_mismatch():
    checker = Checker()
    ids = _published(checker, count=1)
    log = _single(checker, [])
    log.take("message", ids[0], "something else")
    assert checker.check().mismatched == 1


def test_multi_channel_cursors_are_decoded_and_checked():
    assert decode_cursor("1bn2v6p_mwyue8to.mwyue8th~2", ("a", "b")) == {
        "a": f"{int('mwyue8to', 36)}-0",
        "b": f"{int('mwyue8th', 36)}-2",
    }
    checker = Checker()
    checker.acknowledged("a", "36-0", "x")
    checker.acknowledged("b", "72-0", "y", event="kind")
    log = checker.subscriber(("a", "b"))
    log.opened(log.connecting(None), "tag_0.0")
    log.take("a", "tag_10.0", "x")
    log.take("b:kind", "tag_10.20", "y")
    assert checker.check().ok, checker.check().summary()
    log.take("a", "tag_11.0", "never")  # the cursor moved b back: a client resuming from it would see b again
    report = checker.check()
    assert report.bad_cursors == 1 and report.unexpected == 1, report.summary()


def test_a_resume_that_opens_elsewhere_and_a_refused_stream_are_flagged():
    checker = Checker()
    log = _single(checker, [])
    log.opened(log.connecting("100-3"), "100-0")
    log.ended(log.connecting("100-3"), "status 503")
    report = checker.check()
    assert (report.bad_cursors, report.bad_streams) == (1, 1), report.summary()


def test_chunked_body_decoding_survives_any_split():
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
    for size in (1, 2, 3, 7, len(raw)):
        body, out = _ChunkedBody(), b""
        for start in range(0, len(raw), size):
            out += body.feed(raw[start : start + size])
        assert (out, body.status, body.complete) == (b"helloabc", 200, True)


def test_a_gap_must_be_followed_by_its_first_available_and_skip_only_what_is_gone():
    checker = Checker()
    ids = _published(checker)
    log = _single(checker, [ids[0]])
    gap = json.dumps({"channel": "a", "requested": ids[0], "first_available": ids[3]})
    log.take("gap", ids[0], gap)
    log.take("gap", ids[0], gap)  # the connection dropped before the first event: the same gap comes again
    log.take("message", ids[3], "m4")
    log.take("message", ids[4], "m5")
    assert checker.check(buffered={"a": ids[3:]}).ok
    report = checker.check(buffered={"a": ids[2:]})  # 100-3 was still there: the gap claimed too much
    assert report.bad_gaps == 1, report.summary()

    checker = Checker()
    ids = _published(checker)
    log = _single(checker, [ids[0]])
    log.take("gap", ids[0], json.dumps({"channel": "a", "requested": ids[0], "first_available": ids[2]}))
    log.take("message", ids[3], "m4")  # first_available itself never came
    log.take("message", ids[4], "m5")
    report = checker.check()
    assert (report.bad_gaps, report.lost) == (1, 1), report.summary()


def _gap_over_nothing_acknowledged(checker: Checker):
    """Acknowledged 100-1, 100-2 and 100-5; a subscriber told it missed (100-2, 100-5), nothing acknowledged there."""
    for n in (1, 2, 5):
        checker.acknowledged("a", f"100-{n}", f"m{n}")
    log = _single(checker, ["100-1", "100-2"])
    log.take("gap", "100-2", json.dumps({"channel": "a", "requested": "100-2", "first_available": "100-5"}))
    log.take("message", "100-5", "m5")
    return log


def test_a_gap_is_explained_only_by_an_unacknowledged_publish_it_could_span():
    # Attempted once 100-5 was acknowledged: if stored at all, it is above 100-5, outside the gap.
    checker = Checker()
    _gap_over_nothing_acknowledged(checker)
    checker.unacknowledged("a", "late", "status 503", after="100-5")
    report = checker.check()
    assert report.bad_gaps == 1, report.summary()

    # Attempted once 100-2 was acknowledged: it may be the 100-3 the buffer lost.
    checker = Checker()
    _gap_over_nothing_acknowledged(checker)
    checker.unacknowledged("a", "timed out", "status 503", after="100-2")
    assert checker.check().ok, checker.check().summary()

    # Received by another subscriber as 100-9: its place is known, and it is not in the gap.
    checker = Checker()
    _gap_over_nothing_acknowledged(checker)
    checker.unacknowledged("a", "stored anyway", "status 503")
    other = _single(checker, ["100-1", "100-2", "100-5"])
    other.take("message", "100-9", "stored anyway")
    report = checker.check()
    assert (report.bad_gaps, report.unacked_delivered, report.lost) == (1, 1, 0), report.summary()

    # Received as 100-4: it is what the gap skipped.
    checker = Checker()
    _gap_over_nothing_acknowledged(checker)
    checker.unacknowledged("a", "stored anyway", "status 503")
    other = _single(checker, ["100-1", "100-2"])
    other.take("message", "100-4", "stored anyway")
    other.take("message", "100-5", "m5")
    assert checker.check().ok, checker.check().summary()


def test_an_unacknowledged_publish_on_another_channel_explains_no_gap():
    checker = Checker()
    _gap_over_nothing_acknowledged(checker)
    checker.unacknowledged("b", "elsewhere", "status 503")
    assert checker.check().bad_gaps == 1

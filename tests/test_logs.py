"""Logs as an operator reads them: JSON lines on demand, one line per stream opened and closed, with the reason."""

from __future__ import annotations

import json

from tests.servers import GatewayProcess, wait_until
from tests.streams import open_stream


async def test_json_logs_have_a_line_per_stream_opened_and_closed_with_the_reason(redis_server, channel):
    gateway = GatewayProcess(redis_server.url, "--log-format", "json").start()
    try:
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
        wait_until(lambda: "stream closed" in gateway.log(), what="the close line")
    finally:
        gateway.stop()
    lines = [json.loads(line) for line in gateway.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    opened = [line for line in lines if line["message"] == "stream opened"]
    closed = [line for line in lines if line["message"] == "stream closed"]
    assert [line["channels"] for line in opened] == [channel]
    assert [(line["channels"], line["reason"]) for line in closed] == [(channel, "client_left")]
    assert any(line["logger"].startswith("uvicorn") for line in lines), "uvicorn's own lines are JSON too"


async def test_text_logs_show_the_stream_fields(gateway, channel):
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")

    def closed_line_logged() -> bool:
        return any(
            "stream closed" in line and f"channels={channel} " in line and "reason=client_left" in line
            for line in gateway.log().splitlines()
        )

    wait_until(closed_line_logged, what="the stream's close line")

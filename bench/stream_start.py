"""What each step of a stream's start costs in the gateway's own code, measured alone, in this process.

    .venv/bin/python -m bench.stream_start              # 20,000 starts per step, best of 5
    .venv/bin/python -m bench.stream_start --starts 5000

A real Redis and a real Hub: a holder subscriber keeps one channel subscribed, with 10 events in its ring, and each
step runs the gateway's own functions as ``GET /events/<channel>`` does, resuming one event behind. What is not here
is the ASGI plumbing around them (uvicorn's request cycle, its proxy-headers middleware, the access log and the
fronts' calls) and the socket writes: ``python -m bench.storm --scenarios empty --servers gateway1,floor`` measures
uvicorn's own part of a stream start, and the difference between the storm's CPU per stream and the sum below is the
plumbing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
from types import SimpleNamespace

from bench.timing import best_us, measured_beside_redis, print_steps, run_now
from gateway.brokers.single import SingleNodeBroker
from gateway.config import Settings
from gateway.cursor import format_stream_id
from gateway.fanout.hub import Hub
from gateway.fanout.recent import recent_limits
from gateway.fanout.replay import replay
from gateway.fanout.subscriber import Subscriber
from gateway.http.events import stream_for
from gateway.http.front import route_path
from gateway.http.stream import EventStream
from gateway.logs import TextFormatter
from gateway.security.auth import Authenticator
from gateway.security.tokens import mint

CHANNEL = "start"
SECRET = "bench-secret-of-32-bytes-or-more!!"


async def measure(redis_url: str, starts: int) -> list[tuple[str, float]]:
    settings = Settings(redis_url=redis_url, auth="off")
    hub = Hub(SingleNodeBroker(settings), recent=recent_limits(settings))
    await hub.start()
    try:
        holder = Subscriber([CHANNEL], max_events=10_000, max_bytes=10**8)
        holder.start_at({CHANNEL: await hub.backlog.tail(CHANNEL)})
        if (waiting := hub.attach(holder)) is not None:
            await waiting
        holder.go_live()
        ids = [await hub.broker.publish(CHANNEL, f"event {n}".ljust(100, "x")) for n in range(10)]
        while hub.recent.held(CHANNEL) < 10:
            await asyncio.sleep(0.01)
        cursor = ids[-2]
        scope = {
            "type": "http", "method": "GET", "path": f"/events/{CHANNEL}", "root_path": "", "query_string": b"",
            "headers": [(b"host", b"gateway"), (b"accept", b"text/event-stream"), (b"last-event-id", cursor.encode())],
            "client": ("127.0.0.1", 50000),
        }  # fmt: skip
        state = SimpleNamespace(settings=settings, hub=hub, auth=Authenticator(settings))
        token = mint(subscribe=[CHANNEL], ttl=3600, secret=SECRET)
        auth_settings = Settings(redis_url=redis_url, auth="jwt", jwt_secret=SECRET)
        auth_state = SimpleNamespace(settings=auth_settings, hub=hub, auth=Authenticator(auth_settings))
        auth_scope = {**scope, "headers": [*scope["headers"], (b"authorization", f"Bearer {token}".encode())]}
        # Tokens not seen before, one per start of every round: the first verification of each.
        fresh = iter(
            [
                {**scope, "headers": [*scope["headers"], (b"authorization", f"Bearer {minted}".encode())]}
                for minted in (mint(subscribe=[CHANNEL], ttl=3600 + n, secret=SECRET) for n in range(5 * starts))
            ]
        )

        def start_and_replay() -> None:
            stream = stream_for(state, scope, CHANNEL)
            subscriber = Subscriber(
                stream.channels, max_events=settings.client_buffer_events, max_bytes=settings.client_buffer_bytes
            )
            stream._subscriber = subscriber
            hub.open(subscriber)
            stream._opening = run_now(stream._opening_lines(subscriber))
            assert hub.attach(subscriber) is None
            run_now(replay(hub.backlog, subscriber, _sent))
            subscriber.close("client_left")
            hub.detach(subscriber)

        logger = logging.getLogger("gateway.http.stream")
        handler = logging.StreamHandler(io.StringIO())
        handler.setFormatter(TextFormatter())
        fields = {"channels": CHANNEL, "client": "127.0.0.1:50000", "resume": True}

        def two_log_lines() -> None:
            logger.info("stream opened", extra={"fields": fields})
            logger.info("stream closed", extra={"fields": {**fields, "reason": "client_left", "seconds": 1.5}})

        def the_objects() -> tuple[EventStream, Subscriber]:
            return EventStream(hub, (CHANNEL,), None, settings), Subscriber(
                [CHANNEL], max_events=1024, max_bytes=4 << 20, heartbeat=15.0, send_timeout=30.0
            )

        steps = [
            ("routing: the path matched (route_path)", lambda: route_path(scope) == "/events" or None),
            ("the request read and checked, auth off (stream_for)", lambda: stream_for(state, scope, CHANNEL)),
            ("the same with a new Bearer JWT checked (HS256)", lambda: stream_for(auth_state, next(fresh), CHANNEL)),
            (
                "the same with a token verified before (a reconnect)",
                lambda: stream_for(auth_state, auth_scope, CHANNEL),
            ),  # noqa: E501
            ("EventStream and Subscriber built", the_objects),
            ("stream_for, start position, attach, 1 event from the ring, detach", start_and_replay),
        ]
        results = [(name, best_us(step, starts)) for name, step in steps]
        logger.addHandler(handler)
        logger.propagate, level = False, logger.level
        logger.setLevel(logging.INFO)
        try:
            results.append(("the two log lines, at info, text, to memory", best_us(two_log_lines, starts)))
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
            logger.setLevel(level)
        assert format_stream_id(holder.positions[CHANNEL]) == ids[-1]
        return results
    finally:
        await hub.stop()
        await hub.broker.close()


async def _sent(body: bytes) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_start", description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=20_000, help="starts per step and round (20,000)")
    args = parser.parse_args()
    results = measured_beside_redis(measure, args.starts)
    print_steps(results, "start", args.starts)


if __name__ == "__main__":
    main()

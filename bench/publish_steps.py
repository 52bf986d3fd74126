"""What each step of a single publish costs in the gateway's own code, measured alone, in this process.

    .venv/bin/python -m bench.publish_steps                 # 20,000 publishes per step, best of 5
    .venv/bin/python -m bench.publish_steps --publishes 5000

A real Redis: the steps that need none (the checks, the body, the metrics, the answer) run the gateway's own
functions as ``POST /publish/<channel>`` does, timed by the clock; the script call and the whole app (the access log,
StreamHost and the publish front around it, with a ``send`` that drops the answer) run with 16 publishes in flight, as
wrk's 16 connections keep them, timed by this process's CPU clock, so Redis's side is not in them. What is not here is
uvicorn's request cycle and the socket writes: ``python -m bench.publish --servers gateway1,nchan1,floor`` measures
those, as the ``floor`` server (bench/floor_app.py); the gateway's CPU per publish there is about the floor plus the
whole app here.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from starlette.requests import Request

from bench.timing import best_us, measured_beside_redis, print_steps, run_now
from gateway.app import create_app
from gateway.brokers.naming import validate_channel
from gateway.brokers.single import SingleNodeBroker
from gateway.config import Settings
from gateway.fanout.hub import Hub
from gateway.http.front import route_path
from gateway.http.publish import PREFIX, _query_value, read_body
from gateway.http.publish_rate import PublishRate
from gateway.http.whole import json_line
from gateway.metrics import PUBLISH_SECONDS, PUBLISHES
from gateway.security.auth import Authenticator
from gateway.security.tokens import mint

CHANNEL = "steps"
BODY = b"x" * 64
SECRET = "bench-secret-of-32-bytes-or-more!!"
IN_FLIGHT = 16


async def best_cpu_us(publish: Callable[[], Awaitable[object]], publishes: int, rounds: int = 5) -> float:
    """This process's CPU per publish with ``IN_FLIGHT`` publishes always under way, best of ``rounds``."""

    async def one_connection() -> None:
        for _ in range(publishes // IN_FLIGHT):
            await publish()

    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        await asyncio.gather(*(one_connection() for _ in range(IN_FLIGHT)))
        best = min(best, (time.process_time() - began) / (publishes // IN_FLIGHT * IN_FLIGHT) * 1e6)
    return best


def publish_scope(headers: list[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    return {
        "type": "http", "method": "POST", "path": PREFIX + CHANNEL, "root_path": "", "query_string": b"",
        "headers": [(b"host", b"gateway"), (b"content-type", b"text/plain"),
                    (b"content-length", str(len(BODY)).encode()), *headers],
        "client": ("127.0.0.1", 50000), "http_version": "1.1", "scheme": "http",
    }  # fmt: skip


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def measure(redis_url: str, publishes: int) -> list[tuple[str, float]]:
    settings = Settings(redis_url=redis_url, auth="off", log_level="warning")
    scope = publish_scope()
    auth_settings = Settings(redis_url=redis_url, auth="jwt", jwt_secret=SECRET)
    auth = Authenticator(auth_settings)
    token = mint(publish=[CHANNEL], ttl=3600, secret=SECRET)
    auth_scope = publish_scope([(b"authorization", f"Bearer {token}".encode())])
    rate = PublishRate(1e9, 10**9)

    def checks() -> None:
        path = route_path(scope)
        if path.startswith(PREFIX[:-1]) and path.startswith(PREFIX):
            validate_channel(path[len(PREFIX) :])
            _query_value(scope, "event")

    def metrics() -> None:
        with PUBLISH_SECONDS.time():
            pass
        PUBLISHES.labels("published").inc()

    results = [
        ("routing and the checks before the body (path, channel, ?event=)", best_us(checks, publishes)),
        (
            "a Bearer JWT verified before (HS256), for_publish",
            best_us(lambda: auth.for_publish(Request(auth_scope, receive), CHANNEL), publishes),
        ),
        ("the publish rate taken (SSE_GATEWAY_PUBLISH_RATE on)", best_us(lambda: rate.take("127.0.0.1"), publishes)),
        ("the body read and decoded", best_us(lambda: run_now(read_body(scope, receive, 1 << 20)).decode(), publishes)),
        ("the metrics (PUBLISH_SECONDS, PUBLISHES)", best_us(metrics, publishes)),
        (
            "the JSON answer rendered",
            best_us(lambda: json_line({"channel": CHANNEL, "id": "1765000000000-0"}), publishes),
        ),
    ]

    hub = Hub(SingleNodeBroker(settings))
    await hub.start()
    broker = hub.broker
    try:
        results.append(
            (
                f"the script call, {IN_FLIGHT} in flight (coalesced, merged; CPU of this process)",
                await best_cpu_us(lambda: broker.publish(CHANNEL, BODY.decode()), publishes),
            )
        )
    finally:
        await hub.stop()
        await broker.close()

    app = create_app(settings)
    starlette = app.starlette
    async with starlette.router.lifespan_context(starlette):
        statuses: set[int] = set()

        async def dropped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.add(message["status"])

        async def through_the_app() -> None:
            await app(publish_scope(), receive, dropped)

        results.append(
            (
                f"the whole app: access log, StreamHost, publish front, {IN_FLIGHT} in flight (CPU)",
                await best_cpu_us(through_the_app, publishes),
            )
        )
        if statuses != {201}:
            raise RuntimeError(f"the app answered {sorted(statuses)}, not only 201: the step measured something else")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publish_steps", description=__doc__.split("\n")[0])
    parser.add_argument("--publishes", type=int, default=20_000, help="publishes per step and round (20,000)")
    args = parser.parse_args()
    results = measured_beside_redis(measure, args.publishes, uvloop.run)  # the gateway's loop
    print_steps(results, "publish", args.publishes)


if __name__ == "__main__":
    main()

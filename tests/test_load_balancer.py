"""Several gateways behind a real nginx running deploy/nginx/sse-gateway.conf: events stream through it, and a
client whose gateway is killed reconnects through nginx to another one and resumes exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.proxies import NginxProcess
from tests.servers import GatewayProcess, RedisProcess
from tests.streams import open_stream
from tests.test_metrics import _value


@pytest.fixture
def behind_nginx(redis_server: RedisProcess) -> Iterator[tuple[NginxProcess, list[GatewayProcess]]]:
    gateways = [GatewayProcess(redis_server.url).start() for _ in range(2)]
    nginx = NginxProcess([gateway.port for gateway in gateways]).start()
    yield nginx, gateways
    nginx.stop()
    for gateway in gateways:
        gateway.stop()


def _serving(gateways: list[GatewayProcess]) -> GatewayProcess:
    """The gateway that holds the one open stream."""
    (holder,) = [g for g in gateways if _value(httpx.get(f"{g.url}/metrics", timeout=5).text, "sse_open_streams") == 1]
    return holder


@pytest.mark.timeout(90)
async def test_a_client_whose_gateway_is_killed_resumes_exactly_through_nginx_on_another(behind_nginx, channel):
    nginx, gateways = behind_nginx
    attempts: list[tuple[str, str | None]] = []  # each publish's data, and its id if it was acknowledged
    done = asyncio.Event()

    async def publish_through_nginx() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            n = 0
            while not done.is_set():
                try:
                    response = await client.post(f"{nginx.url}/publish/{channel}", content=f"{n}")
                except httpx.HTTPError:
                    response = None
                ok = response is not None and response.status_code == 201
                attempts.append((f"{n}", response.json()["id"] if ok else None))
                n += 1
                await asyncio.sleep(0.005)  # pacing the publisher, not a synchronisation

    def acknowledged() -> list[str]:
        return [event_id for _, event_id in attempts if event_id is not None]

    received: list[tuple[str, str]] = []  # (id, data)
    publisher: asyncio.Task[None] | None = None
    try:
        async with open_stream(f"{nginx.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            # Only now: a fresh stream starts at the newest event, so one published before it opened is not its own.
            publisher = asyncio.create_task(publish_through_nginx())
            while len(received) < 30:
                event = await stream.next_event()
                received.append((event.id, event.data))
            holder = await asyncio.to_thread(_serving, gateways)
            holder.kill()
            with pytest.raises(EOFError):  # nginx ends the client's response when its gateway dies
                while True:
                    event = await stream.next_event()
                    received.append((event.id, event.data))
        # As EventSource would: reconnect to the same address with the last id seen.
        async with open_stream(f"{nginx.url}/events/{channel}", last_event_id=received[-1][0]) as resumed:
            await resumed.read_raw_until(b"retry:")
            survivor = await asyncio.to_thread(_serving, [g for g in gateways if g is not holder])
            assert survivor is not holder
            target = len(acknowledged()) + 30
            while len(acknowledged()) < target:  # publishes through the survivor
                event = await resumed.next_event()
                received.append((event.id, event.data))
            done.set()
            await publisher
            wanted = set(acknowledged())
            while not wanted <= {event_id for event_id, _ in received}:
                event = await resumed.next_event()
                received.append((event.id, event.data))
    finally:
        done.set()
        if publisher is not None:
            await publisher
    ids = [event_id for event_id, _ in received]
    assert len(set(ids)) == len(ids), "no event twice"
    assert [i for i in ids if i in wanted] == acknowledged(), "every acknowledged event, in order"
    # A publish whose gateway died before answering may still have been stored, and so delivered: only those.
    unanswered = {data for data, event_id in attempts if event_id is None}
    assert all(data in unanswered for event_id, data in received if event_id not in wanted)


def test_the_gateway_logs_the_clients_address_not_nginxs_and_not_a_forged_one(behind_nginx):
    nginx, gateways = behind_nginx
    # nginx reaches the gateways from 127.0.0.1; this client comes from another loopback address, and forges a header.
    transport = httpx.HTTPTransport(local_address="127.0.0.3")
    with httpx.Client(transport=transport, timeout=5) as client:
        response = client.get(f"{nginx.url}/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 200
    logs = "".join(gateway.log() for gateway in gateways)
    assert '127.0.0.3:0 - "GET /healthz' in logs, logs[-2000:]
    assert "203.0.113.9" not in logs

"""Redis memory per channel and per buffered event, measured with MEMORY USAGE and INFO on a private real server.

    .venv/bin/python -m bench.sizing                 # 100,000 channels with one event, and 1000-event buffers
    .venv/bin/python -m bench.sizing --channels 10000 --data-bytes 64,512

Each publish goes through the gateway's own script (the same EVALSHA the gateway sends), pipelined. The figures are
Redis's own accounting, so they do not depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import json

import redis

from gateway.brokers.naming import Naming
from gateway.brokers.single import PUBLISH_SCRIPT
from gateway.config import Settings
from tests.servers import RedisProcess

PIPELINE = 1000


def _publish(client: redis.Redis, channels: list[str], events: int, data: str) -> None:
    settings, naming = Settings(), Naming(Settings().key_prefix)
    sha = client.script_load(PUBLISH_SCRIPT)
    pipe = client.pipeline(transaction=False)
    queued = 0
    for _ in range(events):
        for channel in channels:
            keys = [naming.stream_key(channel), naming.pubsub_channel(channel)]
            args = [settings.buffer_maxlen, int(settings.buffer_max_age * 1000), "", data]
            pipe.evalsha(sha, 2, *keys, *args)
            queued += 1
            if queued == PIPELINE:
                pipe.execute()
                queued = 0
    pipe.execute()


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure(channels: int, data_bytes: int, buffered: int) -> dict[str, float]:
    server = RedisProcess().start()
    try:
        client = server.client()
        data = "x" * data_bytes
        # Many channels, one event each: what quiet per-user or per-order channels cost.
        names = [f"user-{i}" for i in range(channels)]
        before = _used(client)
        _publish(client, names, 1, data)
        many = _used(client) - before
        one_key = client.memory_usage(Naming("sse:").stream_key(names[0]), samples=0)
        # One channel with a full buffer: what each further buffered event adds.
        client.flushall()
        before = _used(client)
        _publish(client, ["busy"], buffered, data)
        full = _used(client) - before
        full_key = client.memory_usage(Naming("sse:").stream_key("busy"), samples=0)
        return {
            "channels": channels,
            "data_bytes": data_bytes,
            "bytes_per_quiet_channel": round(many / channels),
            "memory_usage_of_one_event_buffer": one_key,
            "buffered_events": buffered,
            "memory_usage_of_full_buffer": full_key,
            "bytes_per_buffered_event": round(full / buffered),
            "mib_for_100k_quiet_channels": round(many / channels * 100_000 / 2**20, 1),
            "mib_for_100k_full_buffers": round(full_key * 100_000 / 2**20, 1),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=100_000)
    parser.add_argument("--data-bytes", default="64,512", help="comma-separated event sizes")
    parser.add_argument("--buffered", type=int, default=Settings().buffer_maxlen, help="events in the full buffer")
    args = parser.parse_args()
    for size in (int(item) for item in args.data_bytes.split(",")):
        print(json.dumps(measure(args.channels, size, args.buffered)))


if __name__ == "__main__":
    main()

"""The floor under a delivery on this machine: the CPU of one small write to one of many loopback connections.

A reader process holds N connections open and reads them all; this process writes a 170-byte chunk to each, paced
like scenario (c), once through uvloop's transport and once with a bare ``os.write`` on the socket. Run it as
``python -m bench.write_floor``; it prints microseconds of this process's CPU per write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys

import uvloop

PAYLOAD = b"x" * 170
READER = r"""
import asyncio, sys, uvloop

class Discard(asyncio.Protocol):
    def data_received(self, data):
        pass

async def main():
    loop = asyncio.get_running_loop()
    for _ in range(int(sys.argv[2])):
        await loop.create_connection(Discard, "127.0.0.1", int(sys.argv[1]))
    print("connected", flush=True)
    await asyncio.sleep(3600)

uvloop.run(main())
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(connections: int, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(port), str(connections)], stdout=subprocess.PIPE)
    try:
        await loop.run_in_executor(None, reader.stdout.readline)  # type: ignore[union-attr]
        await asyncio.sleep(0.5)
        fds = [t.get_extra_info("socket").fileno() for t in transports]
        for way in ("transport.write", "os.write") * 2:
            started = cpu_seconds()
            for _ in range(rounds):
                if way == "os.write":
                    for fd in fds:
                        os.write(fd, PAYLOAD)
                else:
                    for transport in transports:
                        transport.write(PAYLOAD)
                await asyncio.sleep(0.02)  # the reader goes idle between rounds, as in the paced scenarios
            per_write = (cpu_seconds() - started) / rounds / len(fds) * 1e6
            print(f"{way:16s} {per_write:5.2f} µs of CPU per write")
    finally:
        reader.kill()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    uvloop.run(measure(args.connections, args.rounds))


if __name__ == "__main__":
    main()

"""What gateway.http.protocol costs per request: one gateway with the limits on, one with them off, the same wrk load.

    .venv/bin/python -m bench.http_limits                # 3 rounds of 5 s each, interleaved
    .venv/bin/python -m bench.http_limits --rounds 5 --seconds 10

"Off" sets the three limits to 0, which serves with uvicorn's plain httptools protocol (gateway.http.protocol
``protocol_for``). The load is wrk with 16 keep-alive connections on ``/healthz``, the cheapest route, where a fixed
cost per request shows the most. Each round reports requests per second and the gateway's CPU per request (utime +
stime from /proc); compare the ratio of the medians, since the machine is shared.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench.measure import cpu_seconds
from tests.servers import GatewayProcess, RedisProcess

OFF = {
    "SSE_GATEWAY_MAX_REQUEST_HEAD_BYTES": "0",
    "SSE_GATEWAY_REQUEST_TIMEOUT": "0",
    "SSE_GATEWAY_MAX_HTTP_CONNECTIONS": "0",
}


def _round(gateway: GatewayProcess, seconds: int) -> tuple[float, float]:
    assert gateway.process is not None
    before = cpu_seconds([gateway.process.pid])
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", gateway.url + "/healthz"], capture_output=True, text=True, check=True
    ).stdout
    cpu = cpu_seconds([gateway.process.pid]) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return requests / seconds, cpu / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    redis = RedisProcess().start()
    env = {"SSE_GATEWAY_LOG_LEVEL": "warning", "TMPDIR": tempfile.mkdtemp(prefix="sse-bench-limits-")}
    gateways = {
        "on": GatewayProcess(redis.url, env=env).start(),
        "off": GatewayProcess(redis.url, env={**env, **OFF}).start(),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in gateways}
    try:
        for _ in range(args.rounds):
            for name, gateway in gateways.items():
                results[name].append(_round(gateway, args.seconds))
                rate, cpu = results[name][-1]
                print(f"{name:>3}: {rate:8.0f} requests/s, {cpu:6.1f} us CPU per request", file=sys.stderr)
    finally:
        for gateway in gateways.values():
            gateway.stop()
        redis.stop()
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    medians = {
        name: (statistics.median(r for r, _ in rounds), statistics.median(c for _, c in rounds))
        for name, rounds in results.items()
    }
    print(f"limits on : {medians['on'][0]:8.0f} requests/s, {medians['on'][1]:6.1f} us CPU per request (median)")
    print(f"limits off: {medians['off'][0]:8.0f} requests/s, {medians['off'][1]:6.1f} us CPU per request (median)")
    print(f"on / off  : {medians['on'][0] / medians['off'][0]:.3f}x requests/s, "
          f"{medians['on'][1] / medians['off'][1]:.3f}x CPU per request")  # fmt: skip


if __name__ == "__main__":
    main()

"""The reconnect storm: thousands of clients connecting at once, the gateway against Nchan in the same run.

    .venv/bin/python -m bench.storm                                 # 3000 clients, 3 repeats, every scenario
    .venv/bin/python -m bench.storm --quick                         # 300 clients, 1 repeat: a smoke run
    .venv/bin/python -m bench.storm --clients 10000                 # over two client processes
    .venv/bin/python -m bench.storm --gateway-env SSE_GATEWAY_RECENT_EVENTS=0     # a switch

Scenarios (``--scenarios``), on a fresh channel each run:

- behind: an anchor event and then ``--behind`` events (100) are published through the server's own endpoint; then
  ``--clients`` streams connect at once with ``Last-Event-ID: <the anchor's id>``, at most ``--in-flight`` (500)
  between connect and response head at a time, and each reads until it has its events, checks they are exactly the
  ones published, in order, and closes.
- one: the same, one event behind.
- fresh: ``--fresh-backlog`` events (10) are published, as on a live feed; then the streams connect with no
  Last-Event-ID (Nchan is told ``nchan_subscriber_first_message newest``, so neither server sends old events), each
  waits for its response head and first body bytes, and they all close once all are open.
- empty: fresh, on a channel that has never had an event (not in the default set): the gateway's ring has no newest id
  to start from, so each stream asks Redis for the channel's tail. The one scenario the ``floor`` server takes
  (bench/floor_app.py: Python's least cost of opening a stream under uvicorn).

In a server's first storm, if it is a fresh one, its resident memory is read once every stream is open: the memory of
an idle stream (``--scenarios fresh`` or ``empty`` first).
In every run one more stream, the holder, is subscribed to the channel from before the publishes to the end, on both
servers: the gateway keeps a channel's recent events in memory only while the channel has a subscriber there, and
the storm starts once the holder has had every event. The server's CPU (its process tree), Redis's CPU and its
command counts (``INFO commandstats``) are read just before the clients go and just after the last one is done.
Servers are interleaved, their order alternating by repeat; each figure in the table is the median over
``--repeat`` runs, and ``bench/results/<stamp>-storm.json`` keeps every run.
"""

from __future__ import annotations

import argparse
import math
import resource
import signal
import sys
import time
import uuid
from pathlib import Path

from bench import report, storm_report
from bench.child import Child
from bench.measure import CpuMeter, memory, process_tree
from bench.poster import Poster
from bench.servers import Redis, Server, start, stop_all

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("behind", "fresh", "one")  # and "empty", on request
# 10,000 storm clients and the holder are past the gateway's default limits of one process (10,000 and 12,000).
GATEWAY_DEFAULTS = {"SSE_GATEWAY_MAX_CONNECTIONS": "20000", "SSE_GATEWAY_MAX_HTTP_CONNECTIONS": "20000"}


def storm_round(server: Server, redis: Redis, scenario: str, args: argparse.Namespace) -> dict:
    behind = {"behind": args.behind, "one": 1}.get(scenario, 0)
    published = {"behind": args.behind, "one": 1, "fresh": args.fresh_backlog}.get(scenario, 0)
    channel = f"storm-{uuid.uuid4().hex[:8]}"
    path = server.subscribe_path([channel])
    holder = Child("bench.storm_clients", {"mode": "hold", "port": server.port, "path": path})
    clients: list[Child] = []
    try:
        _expect(holder, "open", 30, f"{server.name}: the holder's stream")
        anchor = publish_backlog(server, channel, published, holder) if published else None
        anchor = anchor if behind else None  # a fresh stream sends none
        clients = [Child("bench.storm_clients", spec) for spec in _client_specs(server, path, behind, anchor, args)]
        for client in clients:
            _expect(client, "ready", 30, "a client process")
        server_meter, redis_meter = CpuMeter(server.process.pid), CpuMeter(redis.process.pid)
        calls = redis.command_calls()
        rss_before = memory(process_tree(server.process.pid)).rss_kib
        server_meter.start()
        redis_meter.start()
        for client in clients:
            client.send("go")
        goal = "result" if behind else "open"
        reports = [_expect(c, goal, args.timeout + 30, f"{server.name}: the storm") for c in clients]
        server_cpu, redis_cpu = server_meter.stop(), redis_meter.stop()
        after = redis.command_calls()
        calls = {name: n - calls.get(name, 0) for name, n in after.items() if n != calls.get(name, 0)}
        closing = []
        # Every stream of a fresh storm is open now, none has left: what each costs the server in memory. Only on a
        # server's first storm: later ones reuse memory the allocator kept from the storms before.
        first = server.name not in _stormed
        _stormed.add(server.name)
        rss_open = None if behind or not first else memory(process_tree(server.process.pid)).rss_kib - rss_before
        if not behind:
            for client in clients:
                client.send("close")
            closing = [_expect(c, "result", 30, f"{server.name}: closing") for c in clients]
    finally:
        for child in (holder, *clients):
            child.close()
    result = {"scenario": scenario, "server": server.name, "behind": behind}
    result.update(storm_report.figures(reports, closing, behind, server_cpu, redis_cpu, calls))
    result["rss_kib_per_stream"] = rss_open / result["clients"] if rss_open is not None else None
    result["settled"] = settle(server, timeout=60)
    return result


_stormed: set[str] = set()  # servers that have had a storm


def publish_backlog(server: Server, channel: str, behind: int, holder: Child) -> str:
    """Publish an anchor and ``behind`` events after it; the anchor's id, once the holder has had every event."""
    poster = Poster(server.port)
    try:
        anchor = server.event_id(poster.post(server.publish_path(channel), _body(-1)))
        for seq in range(behind):
            poster.post(server.publish_path(channel), _body(seq))
    finally:
        poster.close()
    if not anchor:
        raise RuntimeError(f"{server.name}: the publish answer had no event id")
    deadline = time.monotonic() + 30
    while True:
        message = _expect(holder, None, max(0.0, deadline - time.monotonic()), f"{server.name}: the holder's events")
        if message["event"] == "failed":
            raise RuntimeError(f"{server.name}: the holder's stream failed: {message['reason']}")
        if message["event"] == "seen" and message["seq"] >= behind - 1:
            return anchor


def _body(seq: int) -> str:
    return f"s={seq};".ljust(100, "x")


def _client_specs(server: Server, path: str, behind: int, anchor: str | None, args: argparse.Namespace) -> list[dict]:
    """The clients and the in-flight bound, shared out over the client processes."""
    processes = args.client_processes
    return [
        {
            "mode": "behind" if behind else "fresh", "port": server.port, "path": path, "behind": behind,
            "last_event_id": anchor, "clients": args.clients // processes + (part < args.clients % processes),
            "in_flight": max(1, args.in_flight // processes), "timeout": args.timeout,
        }
        for part in range(processes)
    ]  # fmt: skip


def _expect(child: Child, event: str | None, timeout: float, what: str) -> dict:
    try:
        return child.expect(event, timeout)
    except (TimeoutError, RuntimeError) as exc:
        raise RuntimeError(f"{what}: {exc}") from None


def connections(port: int) -> int:
    """TCP connections on the server's side of ``port`` not yet closed (the listener and TIME_WAIT left out)."""
    local = f":{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return sum(1 for line in table if (f := line.split())[1].endswith(local) and f[3] not in ("0A", "06"))


def settle(server: Server, timeout: float) -> bool:
    """Wait until the server has closed every connection of the run, so that the next run starts from the same place."""
    deadline = time.monotonic() + timeout
    while left := connections(server.port):
        if time.monotonic() > deadline:
            print(f"  {server.name} still has {left} connections open {timeout:.0f} s after the run", file=sys.stderr)
            return False
        time.sleep(0.1)
    return True


def main() -> int:
    args = _arguments()
    gateway_env = {**GATEWAY_DEFAULTS, **dict(item.split("=", 1) for item in args.gateway_env)}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers and the client processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = RESULTS / "tmp" / f"{stamp}-storm"  # server logs and configs, not committed
    workdir.mkdir(parents=True)
    names = args.servers.split(",")
    runs: list[dict] = []
    redis = Redis(workdir)
    servers: list[Server] = []
    try:
        servers += [start(name, redis, workdir, gateway_env) for name in names]
        for scenario in args.scenarios.split(","):
            for repeat in range(args.repeat):
                for server in servers if repeat % 2 == 0 else servers[::-1]:
                    if server.kind == "floor" and scenario != "empty":
                        continue  # it opens streams and does nothing else: there is nothing to publish or replay
                    runs.append({**_one(server, redis, scenario, args), "repeat": repeat})
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what finished", file=sys.stderr)
    finally:
        for server in servers:
            server.stop()
        redis.stop()  # after the servers, which would log its loss
        stop_all()
    shown = storm_report.medians(runs)
    print(storm_report.table(shown, names))
    loud = storm_report.failures(runs)
    print("\n" + "\n".join(loud or ["every client of every run got exactly what it should have"]))
    path = RESULTS / f"{stamp}-storm.json"
    report.write_json(path, {
        "started": stamp, "arguments": vars(args), "gateway_env": gateway_env,
        "machine": report.machine(redis.version), "medians": shown, "runs": runs,
    })  # fmt: skip
    print(f"\nwrote {path}\nserver logs in {workdir}")
    return 1 if loud else 0


def _one(server: Server, redis: Redis, scenario: str, args: argparse.Namespace) -> dict:
    print(f"[{time.strftime('%H:%M:%S')}] ({scenario}) {server.name} ...", file=sys.stderr, flush=True)
    try:
        result = storm_round(server, redis, scenario, args)
    except (RuntimeError, OSError) as exc:
        error = str(exc)[:500]
        if server.process.poll() is not None:
            error += f" (the server exited with {server.process.returncode}: see {server.log})"
        print(f"!!! {server.name} ({scenario}) FAILED: {error}", file=sys.stderr, flush=True)
        return {"scenario": scenario, "server": server.name, "error": error}
    print(
        f"    {result['ok']:,}/{result['clients']:,} ok in {result['seconds'] or 0:.2f} s, "
        f"server {result['server_us_per_stream']:.0f} µs/stream, "
        f"{result['redis_calls_per_stream']:.2f} Redis commands/stream",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return result


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, help="streams per storm (3000; 300 with --quick)")
    parser.add_argument("--behind", type=int, default=100, help="events each client resumes behind (scenario behind)")
    parser.add_argument("--fresh-backlog", type=int, default=10, help="events published before a fresh storm (10)")
    parser.add_argument("--in-flight", type=int, default=500, help="streams between connect and response head at once")
    parser.add_argument("--repeat", type=int, help="runs of each scenario per server; the table shows medians (3)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="behind, fresh, one (and empty)")
    parser.add_argument("--servers", default="gateway1,nchan1")
    parser.add_argument(
        "--client-processes",
        type=int,
        help="processes the clients are shared over (2, or 1 per 5000 clients past 10,000)",
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds a storm may take before it fails")
    parser.add_argument("--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway (a switch)")
    parser.add_argument("--quick", action="store_true", help="300 clients, 1 repeat: a smoke run")
    args = parser.parse_args()
    if bad := [item for item in args.gateway_env if "=" not in item]:
        parser.error(f"--gateway-env takes KEY=VALUE, not {bad[0]}")
    if unknown := set(args.scenarios.split(",")) - {*SCENARIOS, "empty"}:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.clients = args.clients or (300 if args.quick else 3000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.client_processes = args.client_processes or max(2, math.ceil(args.clients / 5000))
    return args


if __name__ == "__main__":
    sys.exit(main())

"""One scenario against one running server: open the clients, warm them up, publish, and measure.

Timeline of a live scenario: server memory is read; the load generators open every connection; warm-up messages
(seq -1) are published to every channel until every connection has received one on each of its channels (so every
subscription is really live); memory is read again; the server's and Redis's CPU counters are read and the load
generators are told ``go``; the publisher runs; the load generators stop when every expected message arrived, or when
nothing arrived for a few seconds; the CPU counters are read again. A replay scenario publishes an anchor and the
backlog first, then resumes from the anchor's id, one client after another.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from bench.child import Child
from bench.measure import CpuMeter, memory, process_tree
from bench.poster import Poster
from bench.scenarios import Scenario
from bench.servers import Redis, Server


def run(server: Server, scenario: Scenario, redis: Redis, workdir: Path, *, idle_timeout: float) -> dict:
    nonce = uuid.uuid4().hex[:6]
    channels = [f"{scenario.key}-{nonce}-{i}" for i in range(scenario.channels)]
    if scenario.replay:
        return _replay(server, scenario, redis, workdir, channels[0], idle_timeout)
    return _live(server, scenario, redis, workdir, channels, idle_timeout)


def _live(server: Server, scenario: Scenario, redis: Redis, workdir: Path, channels: list[str], idle: float) -> dict:
    duration = scenario.messages / scenario.rate if scenario.rate else 0.0
    memory_before = memory(process_tree(server.process.pid))
    loadgens = []
    poster = Poster(server.port)
    try:
        for part in range(scenario.loadgen_processes):
            groups = []
            for channel_set, count in sorted(scenario.channel_sets().items()):
                share = count // scenario.loadgen_processes + (part < count % scenario.loadgen_processes)
                path = server.subscribe_path([channels[c] for c in channel_set])
                groups.append({"path": path, "channels": list(channel_set), "count": share})
            spec = _loadgen_spec(server, scenario, groups, workdir, part, duration + 60, idle)
            loadgens.append(Child("bench.loadgen", {**spec, "warmup": True}))
        connected = [lg.expect("connected", 180) for lg in loadgens]
        ok = sum(c["ok"] for c in connected)
        warm = _warm_up(poster, server, channels, loadgens)
        memory_after = memory(process_tree(server.process.pid))
        server_cpu, redis_cpu = CpuMeter(server.process.pid), CpuMeter(redis.process.pid)
        server_cpu.start()
        redis_cpu.start()
        for lg in loadgens:
            lg.send("go")
        publisher = Child("bench.publisher", _publisher_spec(server, scenario, channels))
        published = publisher.expect(None, duration + 120)
        publisher.close()
        results = [lg.expect("result", duration + 120) for lg in loadgens]
        server_seconds, redis_seconds = server_cpu.stop(), redis_cpu.stop()
    finally:
        poster.close()
        for lg in loadgens:
            lg.close()
    latencies = _latencies(workdir, scenario, len(loadgens))
    delivered = sum(r["delivered"] for r in results)
    span_s = (max(r["last_recv_ns"] for r in results) - published["first_send_ns"]) / 1e9
    return _summary(
        scenario, server, delivered, results, published, server_seconds, redis_seconds, latencies,
        rate=delivered / span_s if delivered and span_s > 0 else 0.0,
        connect_failures=sum(c["failed"] for c in connected),
        connect_errors=sorted({e for c in connected for e in c["errors"]}),
        warm=warm,
        warm_up_publish_failures=poster.failures,
        rss_per_conn_kib=(memory_after.rss_kib - memory_before.rss_kib) / ok if ok else None,
        pss_per_conn_kib=(memory_after.pss_kib - memory_before.pss_kib) / ok if ok else None,
        memory_idle_kib={"rss": memory_after.rss_kib, "pss": memory_after.pss_kib},
    )  # fmt: skip


def _replay(server: Server, scenario: Scenario, redis: Redis, workdir: Path, channel: str, idle: float) -> dict:
    if not server.supports_replay:
        return {"scenario": scenario.key, "server": server.name, "skipped": "the naive design cannot replay"}
    poster = Poster(server.port)
    try:
        anchor = server.event_id(poster.post(server.publish_path(channel), "t=0;c=0;s=-2;anchor"))
    finally:
        poster.close()
    backlog = Scenario(scenario.key, "", 0, messages=scenario.replay_behind)
    filler = Child("bench.publisher", _publisher_spec(server, backlog, [channel]))
    published = filler.expect(None, 120)
    filler.close()
    groups = [{"path": server.subscribe_path([channel]), "channels": [0], "count": scenario.clients,
               "last_event_id": anchor}]  # fmt: skip
    spec = {**_loadgen_spec(server, scenario, groups, workdir, 0, 120, idle), "sequential": True,
            "messages": scenario.replay_behind}  # fmt: skip
    loadgen = Child("bench.loadgen", spec)
    try:
        loadgen.expect("connected", 30)
        server_cpu, redis_cpu = CpuMeter(server.process.pid), CpuMeter(redis.process.pid)
        server_cpu.start()
        redis_cpu.start()
        loadgen.send("go")
        result = loadgen.expect("result", 180)
        server_seconds, redis_seconds = server_cpu.stop(), redis_cpu.stop()
    finally:
        loadgen.close()
    catch_up = np.array(result["catch_up_ns"], dtype=np.int64)
    return _summary(
        scenario, server, result["delivered"], [result], published, server_seconds, redis_seconds, catch_up,
        rate=result["delivered"] / result["wall_s"] if result["wall_s"] else 0.0, anchor=anchor,
        latency_meaning="time for one resuming client to receive its whole backlog",
    )  # fmt: skip


def _warm_up(poster: Poster, server: Server, channels: list[str], loadgens: list[Child]) -> bool:
    """Publish seq -1 to every channel until every connection has had one on each of its channels."""
    waiting = list(loadgens)
    deadline = time.monotonic() + 60
    rounds, wait = 0, 0.3
    while waiting and time.monotonic() < deadline:
        for index, channel in enumerate(channels):
            poster.try_post(server.publish_path(channel), f"t=0;c={index};s=-1;warm-up")
        rounds += 1
        pause = time.monotonic() + wait
        while waiting and time.monotonic() < pause:
            try:
                waiting[0].expect("warm", max(0.01, pause - time.monotonic()))
                waiting.pop(0)
            except TimeoutError:
                break
        wait *= 2  # a slow server still delivering the last round must not be buried in more of them
    time.sleep(0.5 if rounds == 1 else 1.5)  # let the last warm-up deliveries drain before anything is measured
    return not waiting


def _loadgen_spec(server: Server, scenario: Scenario, groups: list[dict], workdir: Path, part: int,
                  deadline: float, idle: float) -> dict:  # fmt: skip
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "groups": groups,
        "messages": scenario.messages,
        "deadline": deadline,
        "idle_timeout": idle,
        "latency_file": str(workdir / f"latency-{part}.bin"),
    }


def _publisher_spec(server: Server, scenario: Scenario, channels: list[str]) -> dict:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "paths": [server.publish_path(c) for c in channels],
        "messages": scenario.messages,
        "rate": scenario.rate,
        "pool": 8,
        "size": 100,
    }


def _latencies(workdir: Path, scenario: Scenario, parts: int) -> np.ndarray:
    arrays = []
    for part in range(parts):
        path = workdir / f"latency-{part}.bin"
        arrays.append(np.fromfile(path, dtype=np.int64))
        path.unlink()
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


def _summary(scenario: Scenario, server: Server, delivered: int, results: list[dict], published: dict,
             server_seconds: float, redis_seconds: float, latencies: np.ndarray, *, rate: float,
             **extra: object) -> dict:  # fmt: skip
    expected = scenario.expected_deliveries
    missing = sum(r["missing"] for r in results)
    duplicates = sum(r["duplicates"] for r in results)
    closed_early = sum(r["closed_early"] for r in results)
    loadgen_cpu = sum(r["cpu_s"] for r in results)
    loadgen_wall = max(r["wall_s"] for r in results)
    ms = (np.percentile(latencies, [50, 99]) / 1e6).tolist() if latencies.size else [None, None]
    all_delivered = (
        delivered == expected and missing == 0 and duplicates == 0 and closed_early == 0
        and published["errors"] == 0 and not extra.get("connect_failures")
    )  # fmt: skip
    return {
        "scenario": scenario.key,
        "title": scenario.title,
        "server": server.name,
        "deliveries": delivered,
        "expected": expected,
        "missing": missing,
        "duplicates": duplicates,
        "closed_early": closed_early,
        "all_delivered": all_delivered,
        "deliveries_per_s": rate,
        "offered_per_s": scenario.offered_load,
        "plot": scenario.plot,
        "server_cpu_s": server_seconds,
        "server_cpu_us_per_delivery": server_seconds / delivered * 1e6 if delivered else None,
        "redis_cpu_s": redis_seconds,
        "redis_cpu_us_per_delivery": redis_seconds / delivered * 1e6 if delivered else None,
        "p50_ms": ms[0],
        "p99_ms": ms[1],
        "max_ms": float(latencies.max() / 1e6) if latencies.size else None,
        "loadgen_cpu_s": loadgen_cpu,
        "loadgen_cpu_percent": loadgen_cpu / loadgen_wall * 100 if loadgen_wall > 0.5 else None,
        "loadgen_cpu_us_per_delivery": loadgen_cpu / delivered * 1e6 if delivered else None,
        "publisher": published,
        **extra,
    }

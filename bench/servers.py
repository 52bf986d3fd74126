"""The servers under test, each started on a free loopback port against the run's one Redis, and stopped for sure.

Every process is started in its own session (process group) and told to die with the orchestrator (PDEATHSIG), and
``stop_all()`` kills every group still running: a Ctrl-C or a crash leaves no nginx, uvicorn or redis-server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.brokers.embedded import find_server_binary

REPO = Path(__file__).resolve().parent.parent
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
BUFFER_LENGTH = 1000  # messages kept per channel for replay, by the gateway (its default) and by Nchan
_running: list[subprocess.Popen[bytes]] = []


def die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
    _running.append(process)
    return process


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers left behind by a master that died first
    if process in _running:
        _running.remove(process)


def stop_all() -> None:
    for process in list(_running):
        stop(process, grace=2.0)


def _wait_for(check, timeout: float, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout} s: {log.read_text(errors='replace')[-2000:]}")


def http_get_status(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return int(sock.recv(64)[9:12])


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.binary = find_server_binary().path
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        log = workdir / "redis.log"
        self.process = spawn(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--maxclients", "19000", "--dir", str(workdir),
            ],
            log,
        )  # fmt: skip
        _wait_for(lambda: self.command("PING") == "+PONG", 15, "redis-server", self.process, log)
        self.version = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.strip()

    def command(self, *words: str) -> str:
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request.encode())
            return sock.recv(4096).decode().strip()

    def command_calls(self) -> dict[str, int]:
        """Calls so far of each command, from ``INFO commandstats`` (``INFO`` itself left out)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            reply = sock.recv(65536)
            length = int(reply[1 : reply.index(b"\r\n")])
            while len(reply) < reply.index(b"\r\n") + 2 + length:
                reply += sock.recv(65536)
        calls = {}
        for line in reply.decode().splitlines():
            if line.startswith("cmdstat_"):
                name, fields = line[len("cmdstat_") :].split(":", 1)
                calls[name] = int(fields.split(",", 1)[0].removeprefix("calls="))
        calls.pop("info", None)
        return calls

    def stop(self) -> None:
        stop(self.process)


@dataclass
class Server:
    """One server under test: how to subscribe and publish, and its root process."""

    name: str
    kind: str  # "gateway", "nchan", "naive" or "floor" (bench/floor_app.py: opens streams, nothing else)
    port: int
    process: subprocess.Popen[bytes]
    workers: int
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def supports_replay(self) -> bool:
        return self.kind not in ("naive", "floor")

    def subscribe_path(self, channels: list[str]) -> str:
        if self.kind == "nchan":
            return f"/sub/{channels[0]}" if len(channels) == 1 else "/multi?c=" + ",".join(channels)
        if len(channels) == 1:
            return f"/events/{channels[0]}"
        return "/events?" + "&".join(f"channel={c}" for c in channels)

    def publish_path(self, channel: str) -> str:
        return f"/pub/{channel}" if self.kind == "nchan" else f"/publish/{channel}"

    def event_id(self, publish_answer: bytes) -> str | None:
        """The id a published message got, from the publish endpoint's JSON answer."""
        answer = json.loads(publish_answer)
        return answer.get("last_message_id") if self.kind == "nchan" else answer.get("id")

    def stop(self) -> None:
        stop(self.process)


def start(name: str, redis: Redis, workdir: Path, gateway_env: dict[str, str] | None = None) -> Server:
    """``gateway_env``: extra settings for a gateway (a benchmark's switches); other servers ignore it."""
    kind, workers = {
        "gateway1": ("gateway", 1), "gateway2": ("gateway", 2),
        "nchan1": ("nchan", 1), "nchan2": ("nchan", 2), "naive": ("naive", 1),
        "floor": ("floor", 1),
    }[name]  # fmt: skip
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_GATEWAY_")}
    if kind == "gateway":
        env.update(SSE_GATEWAY_AUTH="off", SSE_GATEWAY_LOG_LEVEL="warning", **(gateway_env or {}))
        command = [
            sys.executable, "-m", "gateway", "serve", "--port", str(port), "--redis-url", redis.url,
            "--workers", str(workers), "--buffer-maxlen", str(BUFFER_LENGTH),
        ]  # fmt: skip
        ready_path = "/readyz"
    elif kind == "nchan":
        conf = workdir / f"{name}-{port}.conf"
        conf.write_text(nchan_config(workdir, port, redis.port, workers))
        command = ["nginx", "-c", str(conf), "-p", str(workdir)]
        ready_path = "/"
    else:
        env.update(NAIVE_REDIS_URL=redis.url)
        command = [
            sys.executable, "-m", "uvicorn", f"bench.{kind}_app:app", "--port", str(port), "--log-level", "warning",
            "--no-access-log", "--loop", "uvloop", "--http", "httptools",
        ]  # fmt: skip
        ready_path = "/"
    process = spawn(command, log, env)
    _wait_for(lambda: http_get_status(port, ready_path) in (200, 204, 404), 30, name, process, log)
    if workers > 1:
        # Each worker must be up, or the first connections would all go to the one that answered first.
        _wait_for(lambda: _workers_up(process.pid) >= workers, 30, name, process, log)
        time.sleep(1.0)
    return Server(name, kind, port, process, workers, log)


def _workers_up(root: int) -> int:
    from bench.measure import process_tree

    return len(process_tree(root)) - 1


def nchan_config(workdir: Path, port: int, redis_port: int, workers: int) -> str:
    temp = " ".join(f"{kind}_temp_path {workdir}/{kind}_temp;" for kind in ("client_body", "proxy", "fastcgi"))
    temp += f" uwsgi_temp_path {workdir}/uwsgi_temp; scgi_temp_path {workdir}/scgi_temp;"
    return f"""
load_module {NCHAN_MODULE};
worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
user root root;
pid {workdir}/nginx-{port}.pid;
error_log {workdir}/nginx-{port}-error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    {temp}
    upstream bench_redis {{ nchan_redis_server redis://127.0.0.1:{redis_port}; }}
    nchan_message_buffer_length {BUFFER_LENGTH};
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # A stream without Last-Event-ID starts at what is published next, as the gateway's does (the default, oldest,
        # would send it the whole buffer).
        location ~ ^/sub/(.+)$ {{
            nchan_subscriber eventsource; nchan_subscriber_first_message newest;
            nchan_channel_id $1; nchan_redis_pass bench_redis;
        }}
        location = /multi {{
            nchan_subscriber eventsource; nchan_subscriber_first_message newest;
            nchan_channel_id_split_delimiter ",";
            nchan_channel_id $arg_c;
            nchan_redis_pass bench_redis;
        }}
        location = / {{ return 204; }}
        location ~ ^/pub/(.+)$ {{ nchan_publisher; nchan_channel_id $1; nchan_redis_pass bench_redis; }}
    }}
}}
"""

"""Real processes for the tests: a Redis-protocol server and the gateway, each on a free loopback port.

Both can be killed, paused and restarted for real, so fault tests exercise what production would see.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from gateway.brokers.embedded import find_server_binary
from gateway.brokers.single import PUBLISH_SCRIPT
from tests.processes import Signalled


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisProcess(Signalled):
    """A redis-server (or valkey-server) on a fixed port, so a restart comes back at the same URL."""

    def __init__(self, *, appendonly: bool = False, replica_of: RedisProcess | None = None) -> None:
        self.port = free_port()
        self.replica_of = replica_of
        self.directory = Path(tempfile.mkdtemp(prefix="sse-test-redis-"))
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        command = [
            find_server_binary().path,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--logfile", str(self.directory / "server.log"),
        ]  # fmt: skip
        if self.replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(self.replica_of.port), "--repl-diskless-sync-delay", "0"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, what=f"redis on port {self.port}")
        if self.replica_of is not None:
            wait_until(self.in_sync, what=f"replica on port {self.port} in sync")
        return self

    def in_sync(self) -> bool:
        return self.client().info("replication").get("master_link_status") == "up"

    def answers(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=0.5).ping()
        except (redis.RedisError, OSError):
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def publish_with_script(self, channel: str, data: str) -> str:
        """Publish the way any Redis client can: the gateway's own script, straight into Redis (default prefix)."""
        keys = [f"sse:{{{channel}}}:buffer", f"sse:{{{channel}}}"]
        return self.client().eval(PUBLISH_SCRIPT, 2, *keys, 1000, 3600000, "", data).decode()

    def subscriptions(self, channel: str) -> int:
        """How many connections subscribe to the channel's Pub/Sub name."""
        return self.client().pubsub_numsub(f"sse:{{{channel}}}")[0][1]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(timeout=10)


class GatewayProcess(Signalled):
    """``python -m gateway serve`` (or ``demo``) in a subprocess on a free port."""

    def __init__(
        self, redis_url: str | None, *args: str, env: dict[str, str] | None = None, command: str = "serve"
    ) -> None:
        self.port = free_port()
        self.command = command
        self.redis_url = redis_url
        self.args = args
        self.env = {**os.environ, "SSE_GATEWAY_HEARTBEAT": "1", "SSE_GATEWAY_RETRY_MS": "200", **(env or {})}
        self.log_path = Path(tempfile.mkdtemp(prefix="sse-test-gateway-")) / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        command = [sys.executable, "-m", "gateway", self.command, "--port", str(self.port), *self.args]
        if self.redis_url:
            command += ["--redis-url", self.redis_url]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_until(self.ready, what=f"gateway on port {self.port} (log: {self.log_path})", process=self.process)
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(condition, *, what: str, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s")
        time.sleep(0.05)


class ThreadedServer:
    """An ASGI app (``create_app``'s, with routes of a test's own if need be) served by uvicorn in a thread here.

    The app is the gateway's, lifespan and all; only the process is shared with the test. Off the main thread the
    app installs no signal handlers, so ``call_in_loop`` is how a test reaches it (``hub.drain`` as a signal would).
    """

    def __init__(self, app, *, log_level: str = "warning", **options) -> None:
        """``options``: more of uvicorn's settings (``access_log``, ``timeout_keep_alive``...)."""
        import threading

        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, http="httptools", log_level=log_level, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call_in_loop(self, function, *args) -> None:
        """Run ``function(*args)`` on the server's event loop, as a signal handler would schedule it."""
        self.server.servers[0].get_loop().call_soon_threadsafe(function, *args)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), what="uvicorn in a thread", timeout=20)
        if not self.server.started:
            raise RuntimeError("uvicorn in a thread did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

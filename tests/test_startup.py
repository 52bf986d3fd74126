"""Starting on a port that is taken: one clear line, a non-zero exit within seconds, no child process left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import processes_mentioning
from tests.servers import GatewayProcess, wait_until

EXIT_BOUND = 15.0  # seconds; it takes well under one, this is the room a loaded machine needs


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A TMPDIR of the test's own: an embedded server's directory (and so its command line) would be inside it."""
    with tempfile.TemporaryDirectory(prefix="sse-test-startup-") as directory:
        yield Path(directory)


def run_gateway(command: str, port: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    args = [sys.executable, "-m", "gateway", command, "--port", str(port)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=EXIT_BOUND)


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_busy_port_is_one_error_line_and_a_quick_non_zero_exit(command, busy_port, private_tmp):
    result = run_gateway(command, busy_port, private_tmp)  # raises TimeoutExpired if it hangs
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(f"not starting: cannot listen on 127.0.0.1:{busy_port}: Address already in use")
    assert "Traceback" not in result.stderr
    assert "demo running" not in result.stderr
    assert processes_mentioning(str(private_tmp)) == []
    assert list(private_tmp.iterdir()) == [], "an embedded server was started for a gateway that could not listen"


def test_the_child_check_sees_the_embedded_server_of_a_running_gateway(private_tmp):
    # The control for the test above: the same scan finds the embedded server while a gateway runs.
    gateway = GatewayProcess(None, env={"TMPDIR": str(private_tmp)}).start()
    try:
        assert processes_mentioning(str(private_tmp)) != []
    finally:
        gateway.stop()
    wait_until(lambda: processes_mentioning(str(private_tmp)) == [], what="the embedded server to end with the gateway")


def test_serve_logs_the_address_it_listens_on(private_tmp):
    gateway = GatewayProcess(None, env={"TMPDIR": str(private_tmp)}).start()
    try:
        assert f"listening on http://127.0.0.1:{gateway.port} (Ctrl-C to stop)" in gateway.log()
    finally:
        gateway.stop()

"""Processes the tests started: breaking them (``Signalled``), and what /proc says of them: their children, whether
they still run, who names a path."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


class Signalled:
    """Kill, pause and resume for a server a test started (its ``process``), for the tests that break it."""

    process: subprocess.Popen[bytes] | None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """Stop a server a test started, paused or not: SIGTERM, and SIGKILL if it has not gone within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _stat_fields(pid: int | str) -> list[str]:
    # The command name in parentheses may hold spaces; the fields after it are fixed (state, then the parent's pid).
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(entry.name)[1])
            except OSError:  # it ended while we looked
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found

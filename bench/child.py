"""A bench process (load generator, publisher, storm clients) run by an orchestrator, speaking JSON lines on its
stdin and stdout; it dies with the orchestrator."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

from bench.servers import REPO, die_with_parent


class Child:
    """One bench process: a JSON spec as its first line of stdin, then commands; JSON lines back on stdout."""

    def __init__(self, module: str, spec: dict) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        self.lines: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(json.dumps(spec))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def expect(self, event: str | None, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {event or 'answer'} within {timeout} s") from None
            if message is None:
                raise RuntimeError(f"bench process exited with {self.process.wait()} before {event or 'answering'}")
            if event is None or message.get("event") == event:
                return message

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

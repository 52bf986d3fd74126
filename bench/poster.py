"""Publishes from an orchestrator (warm-ups, anchors, backlogs) through a server's own endpoint."""

from __future__ import annotations

import http.client


class Poster:
    """Warm-up and anchor publishes from the orchestrator, over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.failures = 0

    def post(self, path: str, body: str) -> bytes:
        try:
            self.connection.request("POST", path, body, {"Accept": "application/json", "Content-Type": "text/plain"})
            response = self.connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()  # the next request reconnects
            raise RuntimeError(f"publish to {path} failed: {exc!r}") from exc
        if not 200 <= response.status < 300:
            raise RuntimeError(f"publish to {path} answered {response.status}: {answer[:200]!r}")
        return answer

    def try_post(self, path: str, body: str) -> None:
        """A publish whose failure is only counted: a warm-up goes on against a server that is failing."""
        try:
            self.post(path, body)
        except RuntimeError:
            self.failures += 1

    def close(self) -> None:
        self.connection.close()

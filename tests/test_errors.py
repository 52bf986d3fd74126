"""Every JSON answer is one line with a newline after it, so curl leaves the shell prompt on a line of its own."""

from __future__ import annotations

import json
import subprocess


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-s", *args], capture_output=True, text=True, timeout=20, check=True).stdout


def test_a_publish_answer_is_one_json_line(gateway, channel):
    out = curl("-X", "POST", f"{gateway.url}/publish/{channel}", "--data-binary", "hello")
    assert out.endswith("}\n") and out.count("\n") == 1, repr(out)
    assert json.loads(out)["channel"] == channel


def test_an_error_answer_is_one_json_line(gateway):
    out = curl("-X", "POST", f"{gateway.url}/publish/not:a:channel", "--data-binary", "hello")
    assert out.endswith("}\n") and out.count("\n") == 1, repr(out)
    assert json.loads(out)["error"] == "bad_channel"


def test_a_refusal_by_the_head_limit_is_one_json_line(gateway):
    out = curl("-H", "X-Big: " + "a" * 20_000, f"{gateway.url}/healthz")
    assert out.endswith("}\n") and out.count("\n") == 1, repr(out)
    assert json.loads(out)["error"] == "request_head_too_large"

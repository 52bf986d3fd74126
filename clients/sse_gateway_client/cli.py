"""Command line: `listen` prints a channel's events as they arrive, `publish` sends one message."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .client import DEFAULT_BASE_URL, publish, subscribe
from .errors import GatewayClientError
from .parser import ServerSentEvent

__all__ = ["format_event", "main", "run_listen", "run_publish"]

_INDENT = "    "
# Published data is untrusted: keep terminal control sequences (ESC, BEL, ...) from reaching the terminal raw.
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F] if chr(code) not in "\t\n"}


def _default_url() -> str:
    return os.environ.get("SSE_GATEWAY_URL") or DEFAULT_BASE_URL


def format_event(event: ServerSentEvent, channels: Sequence[str], *, as_json: bool = False) -> str:
    """One event as printed by `listen`: `[label] id=ID data`, continuation lines indented, or one JSON object."""
    if as_json:
        return json.dumps({"event": event.event, "id": event.id, "data": event.data}, ensure_ascii=False)
    label = event.event
    if len(channels) == 1 and label != "gap":
        # A single-channel stream carries plain `message` events (or the publisher's type): name the channel.
        label = channels[0] if label == "message" else f"{channels[0]}:{label}"
    head = f"[{label}] id={event.id or '-'}"
    text = event.data.translate(_CONTROLS).replace("\n", "\n" + _INDENT)
    return f"{head} {text}" if text else head


def run_listen(
    channels: Sequence[str],
    url: str = DEFAULT_BASE_URL,
    last_event_id: str | None = None,
    as_json: bool = False,
    token: str | None = None,
) -> int:
    """Print events until interrupted, reconnecting as needed; return a process exit code."""
    try:
        for event in subscribe(channels, base_url=url, last_event_id=last_event_id, token=token):
            print(format_event(event, channels, as_json=as_json), flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): point stdout at devnull so the final flush at exit stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except GatewayClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_publish(
    channel: str,
    data: str | bytes,
    event: str | None = None,
    url: str = DEFAULT_BASE_URL,
    token: str | None = None,
    api_key: str | None = None,
) -> int:
    """Publish one message and print the gateway's JSON answer; return a process exit code."""
    try:
        answer = publish(channel, data, event=event, base_url=url, token=token, api_key=api_key)
    except GatewayClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sse_gateway_client", description="sse-gateway client")
    commands = parser.add_subparsers(dest="command", required=True)
    url_help = "gateway base URL (default: $SSE_GATEWAY_URL or %(default)s)"

    listen = commands.add_parser("listen", help="print events as they arrive, reconnecting")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL")
    listen.add_argument("--url", default=_default_url(), help=url_help)
    listen.add_argument("--last-event-id", metavar="ID", help="resume after this event id")
    listen.add_argument("--json", action="store_true", help="print one JSON object per event")
    add_credential_options(listen, api_key=False)

    send = commands.add_parser("publish", help="publish one message")
    send.add_argument("channel", metavar="CHANNEL")
    send.add_argument("data", metavar="DATA", help="message body; '-' reads it from stdin")
    send.add_argument("--event", metavar="TYPE", help="event type (default: message)")
    send.add_argument("--url", default=_default_url(), help=url_help)
    add_credential_options(send, api_key=True)
    return parser


def add_credential_options(parser: argparse.ArgumentParser, *, api_key: bool) -> None:
    """--token (and --api-key), defaulting to SSE_GATEWAY_TOKEN and SSE_GATEWAY_API_KEY."""
    parser.add_argument("--token", default=os.environ.get("SSE_GATEWAY_TOKEN"), help="JWT (default $SSE_GATEWAY_TOKEN)")
    if api_key:
        parser.add_argument(
            "--api-key", default=os.environ.get("SSE_GATEWAY_API_KEY"), help="API key (default $SSE_GATEWAY_API_KEY)"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "listen":
        return run_listen(args.channels, args.url, args.last_event_id, args.json, args.token)
    data = sys.stdin.buffer.read() if args.data == "-" else args.data
    return run_publish(args.channel, data, args.event, args.url, args.token, args.api_key)

"""Command line: `listen` prints a channel's events as they arrive, `publish` sends one message.

The `sse-gateway` command (gateway.cli) builds its `listen` and `publish` from the functions here, so both commands
take the same options, read the same variables and print the same lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .client import DEFAULT_BASE_URL, post_batch, publish, subscribe
from .errors import GatewayClientError
from .parser import ServerSentEvent

__all__ = [
    "API_KEY_ENV",
    "TOKEN_ENV",
    "URL_ENV",
    "Parser",
    "add_listen_command",
    "add_publish_command",
    "format_event",
    "main",
    "fail",
    "print_answer",
    "read_data",
    "run_listen",
    "run_publish",
]

URL_ENV, TOKEN_ENV, API_KEY_ENV = "SSE_GATEWAY_URL", "SSE_GATEWAY_TOKEN", "SSE_GATEWAY_API_KEY"

Sender = Callable[[argparse.Namespace, str], dict[str, Any]]

_INDENT = "    "
# Published data is untrusted: keep terminal control sequences (ESC, BEL, ...) from reaching the terminal raw.
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F] if chr(code) not in "\t\n"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (exit 2), not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _env(name: str) -> str | None:
    return os.environ.get(name) or None  # an empty variable is unset, as for the gateway's own settings


def add_listen_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    listen = commands.add_parser("listen", help="print a stream's events, reconnecting with Last-Event-ID")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL")
    _add_url_option(listen)
    listen.add_argument("--last-event-id", metavar="ID", help="resume after this event id")
    listen.add_argument("--json", action="store_true", help="print one JSON object per event")
    _add_token_option(listen)
    listen.set_defaults(command="listen", prog=listen.prog, run=run_listen)
    return listen


def add_publish_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    send = commands.add_parser("publish", help="publish one event")
    send.add_argument("channel", metavar="CHANNEL")
    send.add_argument(
        "data", metavar="DATA", help="the event's data; '-' reads standard input, less one trailing newline"
    )
    send.add_argument("--event", metavar="TYPE", help="event type (default: message)")
    _add_url_option(send)
    _add_token_option(send)
    send.add_argument("--api-key", default=_env(API_KEY_ENV), help=f"API key (default ${API_KEY_ENV})")
    send.set_defaults(command="publish", prog=send.prog, run=run_publish)
    return send


def add_publish_many_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    send = commands.add_parser(
        "publish-many", help='publish a batch: one JSON object a line on standard input, {"channel", "data", "event"}'
    )
    _add_url_option(send)
    _add_token_option(send)
    send.add_argument("--api-key", default=_env(API_KEY_ENV), help=f"API key (default ${API_KEY_ENV})")
    send.set_defaults(command="publish-many", prog=send.prog, run=run_publish_many)
    return send


def _add_url_option(parser: argparse.ArgumentParser) -> None:
    default = _env(URL_ENV) or DEFAULT_BASE_URL
    parser.add_argument("--url", default=default, help=f"gateway base URL (default ${URL_ENV} or {DEFAULT_BASE_URL})")


def _add_token_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=_env(TOKEN_ENV), help=f"JWT, sent as a Bearer token (default ${TOKEN_ENV})")


def read_data(value: str) -> str:
    """The data argument of `publish`: itself, or for '-' standard input less exactly one trailing newline.

    Like shell command substitution, this drops the newline that `echo` or an editor ends the input with, but only
    one, so data that ends in blank lines keeps them. Standard input must be UTF-8, as the gateway requires.
    """
    if value != "-":
        return value
    raw = sys.stdin.buffer.read().removesuffix(b"\n")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("bad_body: standard input is not UTF-8 text") from None


def print_answer(answer: dict[str, Any]) -> None:
    """A publish's answer: compact JSON on one line, as the gateway's HTTP answer, newline-terminated."""
    print(json.dumps(answer, separators=(",", ":")), flush=True)


def fail(args: argparse.Namespace, message: str) -> int:
    """Report a failure the way every command does, `<command>: <message>` on stderr; the exit code is 1."""
    print(f"{args.prog}: {message}", file=sys.stderr)
    return 1


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


def run_listen(args: argparse.Namespace) -> int:
    """Print events until interrupted, reconnecting as needed."""
    try:
        for event in subscribe(args.channels, base_url=args.url, last_event_id=args.last_event_id, token=args.token):
            print(format_event(event, args.channels, as_json=args.json), flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): point stdout at devnull so the final flush at exit stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except GatewayClientError as exc:
        return fail(args, str(exc))
    return 0


def run_publish(args: argparse.Namespace, send: Sender | None = None) -> int:
    """Publish one message and print the answer; `send` replaces the HTTP request (`sse-gateway publish --redis-url`).

    A sender returns the answer, `{"channel": ..., "id": ...}`, or raises GatewayClientError.
    """
    try:
        data = read_data(args.data)
    except ValueError as exc:
        return fail(args, str(exc))
    try:
        answer = (send or _send_http)(args, data)
    except GatewayClientError as exc:
        return fail(args, str(exc))
    print_answer(answer)
    return 0


def run_publish_many(args: argparse.Namespace) -> int:
    """Send standard input as one batch, print the answer; exit 1 if any event was refused, naming how many."""
    body = sys.stdin.buffer.read()
    try:
        answer = post_batch(body, base_url=args.url, timeout=60.0, token=args.token, api_key=args.api_key)
    except GatewayClientError as exc:
        return fail(args, str(exc))
    print_answer(answer)
    if answer["failed"]:
        first = next(r for r in answer["results"] if "error" in r)
        return fail(
            args,
            f"{answer['failed']} of {len(answer['results'])} events refused; line {first['line']}: "
            f"{first['error']}: {first['detail']}",
        )
    return 0


def _send_http(args: argparse.Namespace, data: str) -> dict[str, Any]:
    return publish(args.channel, data, event=args.event, base_url=args.url, token=args.token, api_key=args.api_key)


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m sse_gateway_client", description="sse-gateway client")
    commands = parser.add_subparsers(title="commands", required=True)
    add_listen_command(commands)
    add_publish_command(commands)
    add_publish_many_command(commands)
    args = parser.parse_args(argv)
    return args.run(args)

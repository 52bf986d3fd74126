"""The ``sse-gateway`` command: serve, demo, publish, listen, token. Parsing and wiring only; the logic lives elsewhere.

The flags of `serve` are generated from the fields of Settings (gateway.config), so a new setting needs no line here.
`publish` and `listen` are the client's commands (sse_gateway_client.cli), with `publish --redis-url` added.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import Field, fields
from typing import Any

from gateway.config import Settings, env_name, kind, parse
from sse_gateway_client.cli import (
    Parser,
    add_listen_command,
    add_publish_command,
    add_publish_many_command,
    run_publish,
)
from sse_gateway_client.errors import GatewayClientError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ValueError as exc:  # settings that cannot work, from flags or SSE_GATEWAY_* variables
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sse-gateway", description="Redis Pub/Sub channels as Server-Sent Events.")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser(
        "serve",
        help="run the gateway (default 127.0.0.1:8000)",
        description="Run the gateway. Each flag has an SSE_GATEWAY_* variable; a flag wins over its variable.",
    )
    add_settings_flags(serve)
    serve.set_defaults(command="serve", prog=serve.prog, run=_serve)

    demo = commands.add_parser("demo", help="run the gateway with a simulated stock and news publisher")
    add_settings_flags(demo, only=("host", "port"))
    demo.set_defaults(command="demo", prog=demo.prog, run=_demo)

    publish = add_publish_command(commands)
    publish.add_argument("--redis-url", help="publish straight into this Redis instead of through the gateway")
    publish.set_defaults(run=_publish)

    add_publish_many_command(commands)
    add_listen_command(commands)

    token = commands.add_parser("token", help="mint a JWT granting channel patterns")
    token.add_argument("--subscribe", action="append", default=[], metavar="GLOB", help="may subscribe (repeatable)")
    token.add_argument("--publish", action="append", default=[], metavar="GLOB", help="may publish (repeatable)")
    token.add_argument("--ttl", type=float, default=3600, help="seconds until it expires (default 3600)")
    secret, audience = env_name("jwt_secret"), env_name("jwt_audience")
    token.add_argument("--secret", default=os.environ.get(secret) or None, help=f"HS256 secret (default ${secret})")
    token.add_argument("--private-key", help="PEM private key file, for RS256 or ES256")
    token.add_argument("--algorithm", choices=["HS256", "RS256", "ES256"], help="default HS256, or RS256 with a key")
    token.add_argument("--subject", help="the sub claim")
    token.add_argument(
        "--audience", default=os.environ.get(audience) or None, help=f"the aud claim (default ${audience})"
    )
    token.add_argument("--kid", help="key id header, to pick a key from a JWKS")
    token.set_defaults(command="token", prog=token.prog, run=_token)
    return parser


def add_settings_flags(parser: argparse.ArgumentParser, *, only: Collection[str] | None = None) -> None:
    """One flag per setting (or per setting named in `only`): `--buffer-max-age` for buffer_max_age.

    A flag takes the same values as its SSE_GATEWAY_* variable, checked the same way. An unset flag is None, so that
    the variable, else the default, stands (see serve_settings).
    """
    for item in fields(Settings):
        if only is not None and item.name not in only:
            continue
        text = f"{item.metadata.get('help', item.name.replace('_', ' '))} ({env_name(item.name)}{_default(item)})"
        options: dict[str, Any] = {"dest": item.name, "default": None, "help": text.replace("%", "%%")}
        if kind(item) == "bool":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _converter(item)
            options["metavar"] = "N" if kind(item) in ("int", "float") else None
            options["choices"] = item.metadata.get("choices") or None
        parser.add_argument("--" + item.name.replace("_", "-"), **options)


def serve_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """The SSE_GATEWAY_* variables (of `environ`, else the process), overridden by the flags that were given."""
    given = {item.name: getattr(args, item.name, None) for item in fields(Settings)}
    return Settings.from_env(environ).replace(**given)


def _default(item: Field[Any]) -> str:
    value = item.default
    if value is dataclasses.MISSING:
        return ""
    if value is None or value == "":
        return "; default unset" if value is None else "; default empty"
    if isinstance(value, bool):
        return f"; default {str(value).lower()}"
    return f"; default {value:g}" if isinstance(value, float) else f"; default {value}"


def _converter(item: Field[Any]) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return parse(item, raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{raw!r} {exc}") from None

    convert.__name__ = kind(item)  # what argparse calls the type in its own messages
    return convert


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    return serve(serve_settings(args))


def _demo(args: argparse.Namespace) -> int:
    from gateway.server import serve

    # Always on the embedded server, so the simulated feed never lands in a real deployment's Redis.
    settings = serve_settings(args)
    return serve(dataclasses.replace(settings, redis_url=None, workers=1), demo=True)


def _publish(args: argparse.Namespace) -> int:
    return run_publish(args, send=_publish_to_redis if args.redis_url else None)


def _publish_to_redis(args: argparse.Namespace, data: str) -> dict[str, Any]:
    from gateway.errors import GatewayError

    settings = Settings.from_env()  # the key prefix and buffer limits the gateways use
    try:
        return asyncio.run(_publish_with_broker(args.redis_url, settings, args.channel, data, args.event))
    except GatewayError as exc:
        raise GatewayClientError(f"{exc.code}: {exc.detail}") from exc


async def _publish_with_broker(
    url: str, settings: Settings, channel: str, data: str, event: str | None
) -> dict[str, Any]:
    from gateway.brokers import BrokerModeError, broker_for
    from gateway.brokers.naming import validate_channel
    from gateway.errors import RedisUnavailable

    try:
        broker = broker_for(settings.replace(redis_url=url))
    except BrokerModeError as exc:
        raise RedisUnavailable(str(exc)) from exc
    try:
        return {"channel": channel, "id": await broker.publish(validate_channel(channel), data, event)}
    finally:
        await broker.close()


def _token(args: argparse.Namespace) -> int:
    from gateway.security.tokens import mint

    try:
        print(
            mint(
                subscribe=args.subscribe,
                publish=args.publish,
                ttl=args.ttl,
                secret=args.secret,
                private_key_file=args.private_key,
                algorithm=args.algorithm,
                subject=args.subject,
                audience=args.audience,
                key_id=args.kid,
            )
        )
    except (ValueError, OSError) as exc:
        print(f"sse-gateway token: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    sys.exit(main())

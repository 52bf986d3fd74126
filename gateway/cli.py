"""The ``sse-gateway`` command: serve, publish, listen. Parsing and wiring only; the logic lives elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

from gateway.config import Settings
from sse_gateway_client.cli import add_credential_options

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ValueError as exc:  # settings that cannot work, from flags or SSE_GATEWAY_* variables
        print(f"sse-gateway {args.command}: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-gateway", description="Redis Pub/Sub channels as Server-Sent Events.")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the gateway (default 127.0.0.1:8000)")
    serve.add_argument("--host", help="address to bind (SSE_GATEWAY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (SSE_GATEWAY_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (SSE_GATEWAY_WORKERS, default 1)")
    serve.add_argument("--redis-url", help="Redis to use (SSE_GATEWAY_REDIS_URL); unset: start an embedded one")
    serve.add_argument("--key-prefix", help="prefix of Redis keys and channels (SSE_GATEWAY_KEY_PREFIX, default sse:)")
    serve.add_argument("--buffer-maxlen", type=int, help="replay entries kept per channel (default 1000)")
    serve.add_argument("--buffer-max-age", type=float, help="seconds replay entries are kept (default 3600)")
    serve.add_argument("--heartbeat", type=float, help="seconds between heartbeat comments (default 15)")
    serve.add_argument("--retry-ms", type=int, help="reconnect delay hinted to clients (default 3000)")
    serve.add_argument("--max-channels", type=int, help="channels per connection (default 16)")
    serve.add_argument("--max-body-bytes", type=int, help="largest publish body (default 1048576)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    serve.add_argument("--log-format", choices=["text", "json"], help="SSE_GATEWAY_LOG_FORMAT (default text)")
    serve.add_argument("--auth", choices=["auto", "jwt", "off"], help="SSE_GATEWAY_AUTH (default auto)")
    serve.add_argument("--jwt-secret", help="HS256 secret (SSE_GATEWAY_JWT_SECRET)")
    serve.add_argument("--jwt-public-key-file", help="PEM public key for RS256/ES256 (SSE_GATEWAY_JWT_PUBLIC_KEY_FILE)")
    serve.add_argument("--jwt-jwks-file", help="JWKS file for RS256/ES256 (SSE_GATEWAY_JWT_JWKS_FILE)")
    serve.add_argument("--public-channels", help="globs anyone may subscribe to (SSE_GATEWAY_PUBLIC_CHANNELS)")
    serve.add_argument("--cors-origins", help="origins allowed to use the gateway (SSE_GATEWAY_CORS_ORIGINS)")
    serve.set_defaults(command="serve", run=_serve)

    demo = commands.add_parser("demo", help="run the gateway with a simulated stock and news publisher")
    demo.add_argument("--host", help="address to bind (default 127.0.0.1)")
    demo.add_argument("--port", type=int, help="port (default 8000)")
    demo.set_defaults(command="demo", run=_demo)

    publish = commands.add_parser("publish", help="publish one event")
    publish.add_argument("channel")
    publish.add_argument("data", help="the event's data; '-' reads standard input")
    publish.add_argument("--event", help="event type")
    publish.add_argument("--url", default=os.environ.get("SSE_GATEWAY_URL", DEFAULT_GATEWAY_URL), help="gateway URL")
    publish.add_argument("--redis-url", help="publish straight into this Redis instead of through the gateway")
    add_credential_options(publish, api_key=True)
    publish.set_defaults(command="publish", run=_publish)

    listen = commands.add_parser("listen", help="print a stream's events, reconnecting with Last-Event-ID")
    listen.add_argument("channels", nargs="+")
    listen.add_argument("--url", default=os.environ.get("SSE_GATEWAY_URL", DEFAULT_GATEWAY_URL), help="gateway URL")
    listen.add_argument("--last-event-id", help="resume after this id")
    listen.add_argument("--json", action="store_true", help="one JSON object per event")
    add_credential_options(listen, api_key=False)
    listen.set_defaults(command="listen", run=_listen)

    token = commands.add_parser("token", help="mint a JWT granting channel patterns")
    token.add_argument("--subscribe", action="append", default=[], metavar="GLOB", help="may subscribe (repeatable)")
    token.add_argument("--publish", action="append", default=[], metavar="GLOB", help="may publish (repeatable)")
    token.add_argument("--ttl", type=float, default=3600, help="seconds until it expires (default 3600)")
    token.add_argument("--secret", default=os.environ.get("SSE_GATEWAY_JWT_SECRET"), help="HS256 secret")
    token.add_argument("--private-key", help="PEM private key file, for RS256 or ES256")
    token.add_argument("--algorithm", choices=["HS256", "RS256", "ES256"], help="default HS256, or RS256 with a key")
    token.add_argument("--subject", help="the sub claim")
    token.add_argument("--audience", default=os.environ.get("SSE_GATEWAY_JWT_AUDIENCE"), help="the aud claim")
    token.add_argument("--kid", help="key id header, to pick a key from a JWKS")
    token.set_defaults(command="token", run=_token)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    settings = Settings.from_env().replace(
        host=args.host,
        port=args.port,
        workers=args.workers,
        redis_url=args.redis_url,
        key_prefix=args.key_prefix,
        buffer_maxlen=args.buffer_maxlen,
        buffer_max_age=args.buffer_max_age,
        heartbeat=args.heartbeat,
        retry_ms=args.retry_ms,
        max_channels=args.max_channels,
        max_body_bytes=args.max_body_bytes,
        log_level=args.log_level,
        log_format=args.log_format,
        auth=args.auth,
        jwt_secret=args.jwt_secret,
        jwt_public_key_file=args.jwt_public_key_file,
        jwt_jwks_file=args.jwt_jwks_file,
        public_channels=args.public_channels,
        cors_origins=args.cors_origins,
    )
    return serve(settings)


def _demo(args: argparse.Namespace) -> int:
    from gateway.server import serve

    # Always on the embedded server, so the simulated feed never lands in a real deployment's Redis.
    settings = Settings.from_env().replace(host=args.host, port=args.port)
    return serve(dataclasses.replace(settings, redis_url=None, workers=1), demo=True)


def _publish(args: argparse.Namespace) -> int:
    data = sys.stdin.read() if args.data == "-" else args.data
    if not args.redis_url:
        from sse_gateway_client.cli import run_publish

        return run_publish(args.channel, data, args.event, args.url, args.token, args.api_key)
    from gateway.errors import GatewayError

    try:
        result = asyncio.run(_publish_to_redis(args.redis_url, args.channel, data, args.event))
    except GatewayError as exc:
        print(f"sse-gateway publish: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


async def _publish_to_redis(url: str, channel: str, data: str, event: str | None) -> dict[str, str]:
    from gateway.broker import Broker, connect
    from gateway.naming import validate_channel

    client = connect(url)
    try:
        broker = Broker(client, Settings.from_env())
        return {"channel": channel, "id": await broker.publish(validate_channel(channel), data, event)}
    finally:
        await client.aclose()


def _token(args: argparse.Namespace) -> int:
    from gateway.tokens import mint

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


def _listen(args: argparse.Namespace) -> int:
    from sse_gateway_client.cli import run_listen

    return run_listen(args.channels, args.url, args.last_event_id, args.json, args.token)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    sys.exit(main())

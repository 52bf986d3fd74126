"""Who may subscribe to and publish on which channels: JWTs (pyjwt), API keys and public channel patterns.

A token's claims name the channel globs it grants::

    {"sub": "dashboard-7", "exp": 1795780000, "sse": {"subscribe": ["stocks.*", "news"], "publish": ["stocks.*"]}}

A token is read from ``Authorization: Bearer``, then the auth cookie, then the ``access_token`` query parameter.
Each algorithm family needs its own kind of key, so an RSA public key can never be used as an HMAC secret and
``none`` is never accepted.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.requests import HTTPConnection

from gateway.brokers.naming import channel_matches
from gateway.config import Settings, split_list
from gateway.errors import Forbidden, Unauthorized

log = logging.getLogger("gateway.security.auth")

CLAIM = "sse"
# Tokens whose signature and claims were verified, kept with their grants: a client that reconnects (in a reconnect
# storm, every client at once) shows the token it showed before, and pyjwt's checks cost a HS256 stream start about
# 60 µs (python -m bench.stream_start). A kept grant still ends at the token's expiry; a refused token is not kept.
VERIFIED_TOKENS = 16_384


@dataclass(frozen=True)
class Grant:
    """What a request may do; ``expires_at`` (epoch seconds) ends a stream opened with it."""

    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    expires_at: float | None = None

    def may_subscribe(self, channel: str) -> bool:
        return channel_matches(channel, self.subscribe)

    def may_publish(self, channel: str) -> bool:
        return channel_matches(channel, self.publish)


OPEN = Grant(subscribe=("*",), publish=("*",))


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.enabled = auth_enabled(settings)
        self.cookie = settings.auth_cookie
        self.audience = settings.jwt_audience
        self.public = split_list(settings.public_channels)
        self._api_keys = [key.encode() for key in split_list(settings.api_keys)]
        self._ticket_api_keys = [key.encode() for key in split_list(settings.ticket_api_keys)]
        self._secret = settings.jwt_secret
        self._public_key = _load_public_key(settings.jwt_public_key_file) if settings.jwt_public_key_file else None
        self._jwks = _load_jwks(settings.jwt_jwks_file) if settings.jwt_jwks_file else None
        self._verified = functools.lru_cache(maxsize=VERIFIED_TOKENS)(self._verify_signed)

    def for_subscribe(self, connection: HTTPConnection, channels: Iterable[str], ticket: Grant | None = None) -> Grant:
        """The grant for a stream of ``channels``: every channel must be allowed, or none is (401/403).

        ``ticket``: the grant of the stream ticket in the URL (gateway.security.tickets), which then stands in for
        any token."""
        if not self.enabled:
            return OPEN
        token = None if ticket else self._token(connection)
        grant = ticket or (self._verify(token) if token else Grant(subscribe=self.public))
        refused = [c for c in channels if not (grant.may_subscribe(c) or channel_matches(c, self.public))]
        if refused and ticket is None and token is None:
            raise Unauthorized(f"a token is needed to subscribe to {', '.join(refused)}")
        if refused:
            credential = "ticket" if ticket else "token"
            raise Forbidden(f"the {credential} does not grant subscribing to {', '.join(refused)}")
        return grant

    def for_ticket(self, connection: HTTPConnection, channels: Iterable[str]) -> float | None:
        """When the credential a stream ticket for ``channels`` is made from expires (None: never); raises 401/403
        as a stream of those channels would.

        A key of ``ticket_api_keys``, a backend's own credential, may make a ticket for any channel: that is how a
        backend hands its pages streams without giving them a token. A publishing key may not: it never could read.
        A ticket cannot make another, and public channels need none."""
        if not self.enabled:
            return None
        api_key = connection.headers.get("x-api-key")
        if api_key is not None:
            if _listed(api_key, self._ticket_api_keys):
                return None
            if _listed(api_key, self._api_keys):
                raise Forbidden("this API key may publish, not make stream tickets (see SSE_GATEWAY_TICKET_API_KEYS)")
            raise Unauthorized("the API key is not valid")
        if self._token(connection) is None:
            raise Unauthorized("a stream ticket is made from a token (or an API key of SSE_GATEWAY_TICKET_API_KEYS)")
        return self.for_subscribe(connection, channels).expires_at

    def for_publish(self, connection: HTTPConnection, channel: str) -> None:
        if not self.publish_check(connection)(channel):
            raise Forbidden(f"the token does not grant publishing to {channel}")

    def publish_check(self, connection: HTTPConnection) -> Callable[[str], bool]:
        """Whether the request's credentials may publish to a channel, the credentials checked once (for a batch,
        whose lines may name thousands of channels). Raises Unauthorized for missing or bad credentials."""
        if not self.enabled:
            return _anything
        api_key = connection.headers.get("x-api-key")
        if api_key is not None:
            self._check_api_key(api_key)
            return _anything
        token = self._token(connection)
        if token is None:
            raise Unauthorized("publishing needs a token or an API key")
        return self._verify(token).may_publish

    def _check_api_key(self, api_key: str) -> None:
        if not _listed(api_key, self._api_keys):
            raise Unauthorized("the API key is not valid")

    def _token(self, connection: HTTPConnection) -> str | None:
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return connection.cookies.get(self.cookie) or connection.query_params.get("access_token") or None

    def _verify(self, token: str) -> Grant:
        grant = self._verified(token)
        # pyjwt's own rule (the whole seconds of exp), for a token verified before its expiry.
        if grant.expires_at is not None and int(grant.expires_at) <= time.time():
            raise Unauthorized("the token has expired")
        return grant

    def _verify_signed(self, token: str) -> Grant:
        """The token's grant, its signature and claims checked; raises Unauthorized (and is then not cached)."""
        try:
            header = jwt.get_unverified_header(token)
            key, algorithm = self._key_for(header)
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self.audience, options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except (jwt.InvalidTokenError, KeyError, ValueError) as exc:
            raise Unauthorized(f"the token is not valid: {_reason(exc)}") from None
        granted = claims.get(CLAIM) or {}
        if not isinstance(granted, dict):
            raise Unauthorized(f"the token's {CLAIM!r} claim must be an object")
        return Grant(
            subscribe=_patterns(granted.get("subscribe")),
            publish=_patterns(granted.get("publish")),
            expires_at=float(claims["exp"]),
        )

    def _key_for(self, header: dict) -> tuple[object, str]:
        algorithm = header.get("alg")
        if algorithm == "HS256" and self._secret:
            return self._secret, algorithm
        if algorithm in ("RS256", "ES256"):
            if self._jwks is not None and header.get("kid"):
                jwk = self._jwks[header["kid"]]
                if jwk.algorithm_name == algorithm:
                    return jwk.key, algorithm
            if self._public_key is not None and _key_fits(self._public_key, algorithm):
                return self._public_key, algorithm
        raise ValueError(f"no configured key verifies algorithm {algorithm!r}")


def auth_enabled(settings: Settings) -> bool:
    """Whether requests are checked; raises ValueError for a non-loopback gateway left open by accident."""
    if settings.auth == "off":
        log.warning("authentication is OFF (auth=off): anyone who can reach the gateway may subscribe and publish")
        return False
    configured = bool(
        settings.jwt_secret
        or settings.jwt_public_key_file
        or settings.jwt_jwks_file
        or settings.api_keys
        or settings.ticket_api_keys
    )
    if settings.auth == "jwt" or configured:
        if not configured:
            raise ValueError("auth=jwt needs a JWT secret, public key, JWKS file or API key")
        return True
    if settings.auth != "auto":
        raise ValueError(f"auth must be auto, jwt or off, not {settings.auth!r}")
    if _is_loopback(settings.host):
        log.warning(
            "authentication is OFF: no JWT key or API key is configured, and the gateway listens on loopback "
            "(%s) only. Configure a key before exposing it.",
            settings.host,
        )
        return False
    raise ValueError(
        f"the gateway would listen on {settings.host} with no JWT key or API key configured: set "
        "SSE_GATEWAY_JWT_SECRET (or a public key, JWKS file or API key), or SSE_GATEWAY_AUTH=off to run it open"
    )


def _listed(api_key: str, keys: list[bytes]) -> bool:
    return any(hmac.compare_digest(api_key.encode(), key) for key in keys)


def _patterns(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise Unauthorized(f"the token's {CLAIM!r} claim must list channel patterns as strings")


def _load_public_key(path: str) -> object:
    key = load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"{path}: only RSA (RS256) and EC P-256 (ES256) public keys are supported")
    return key


def _load_jwks(path: str) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_json(Path(path).read_text())
    except (jwt.PyJWKSetError, jwt.PyJWKError, jwt.InvalidKeyError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _key_fits(key: object, algorithm: str) -> bool:
    return isinstance(key, rsa.RSAPublicKey) if algorithm == "RS256" else isinstance(key, ec.EllipticCurvePublicKey)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return json.dumps(text)[1:-1][:200]


def _anything(channel: str) -> bool:
    return True

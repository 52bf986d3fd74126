"""What the auth tests share: RSA 2048 and EC P-256 keys made on the spot, honest and forged JWTs, one gateway per
kind of key, and a stream reader that publishes once the stream is subscribed.

Forged tokens are built by hand (base64url and HMAC), because pyjwt refuses to sign most of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sse_gateway_client import SSEParser
from tests.servers import GatewayProcess, RedisProcess, wait_until

SECRET = "hs256-test-secret-" + "k" * 32
AUDIENCE = "sse-gateway-tests"
# Every auth setting blanked, so that the environment the tests run in cannot configure a key.
NO_KEYS = {
    "SSE_GATEWAY_HOST": "127.0.0.1",
    "SSE_GATEWAY_AUTH": "auto",
    "SSE_GATEWAY_JWT_SECRET": "",
    "SSE_GATEWAY_JWT_PUBLIC_KEY_FILE": "",
    "SSE_GATEWAY_JWT_JWKS_FILE": "",
    "SSE_GATEWAY_JWT_AUDIENCE": "",
    "SSE_GATEWAY_API_KEYS": "",
    "SSE_GATEWAY_TICKET_API_KEYS": "",
    "SSE_GATEWAY_PUBLIC_CHANNELS": "",
}


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    kid: str
    private_key: Any

    @classmethod
    def generate(cls, algorithm: str, kid: str) -> KeyPair:
        if algorithm == "RS256":
            return cls(algorithm, kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(algorithm, kid, ec.generate_private_key(ec.SECP256R1()))

    @property
    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        family = jwt.algorithms.RSAAlgorithm if self.algorithm == "RS256" else jwt.algorithms.ECAlgorithm
        return {**family.to_jwk(self.private_key.public_key(), as_dict=True), "kid": self.kid, "alg": self.algorithm}

    def write(self, directory: Path) -> tuple[Path, Path]:
        """The private and public PEM files, named after the kid."""
        private, public = directory / f"{self.kid}.pem", directory / f"{self.kid}.pub.pem"
        private.write_bytes(self.private_pem)
        public.write_bytes(self.public_pem)
        return private, public

    def sign(self, claims: dict[str, Any], *, kid: bool = True) -> str:
        return jwt.encode(
            claims, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid} if kid else None
        )


def write_jwks(path: Path, *pairs: KeyPair) -> Path:
    path.write_text(json.dumps({"keys": [pair.jwk() for pair in pairs]}))
    return path


def claims(
    subscribe: Sequence[str] | str = (), publish: Sequence[str] | str = (), *, ttl: float = 3600, **extra: Any
) -> dict[str, Any]:
    """The claims the gateway reads, with ``aud`` set to AUDIENCE; ``extra`` overrides (None removes a claim)."""
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": "auth-tests",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + int(ttl),
        "sse": {"subscribe": _listed(subscribe), "publish": _listed(publish)},
    }
    body.update(extra)
    return {key: value for key, value in body.items() if value is not None}


def hs256(claims: dict[str, Any], secret: str | bytes = SECRET, **header: Any) -> str:
    """An HS256 token signed by hand, so that any bytes (even a public key) can be the HMAC secret."""
    key = secret.encode() if isinstance(secret, str) else secret
    signing_input = _segment({"alg": "HS256", "typ": "JWT", **header}) + "." + _segment(claims)
    return signing_input + "." + _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def unsigned(claims: dict[str, Any]) -> str:
    """``alg: none`` with an empty signature."""
    return _segment({"alg": "none", "typ": "JWT"}) + "." + _segment(claims) + "."


def with_payload(token: str, claims: dict[str, Any]) -> str:
    """The same header and signature over a different payload."""
    header, _, signature = token.split(".")
    return f"{header}.{_segment(claims)}.{signature}"


def with_flipped_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return f"{header}.{payload}.{_b64(bytes(raw))}"


def _listed(patterns: Sequence[str] | str) -> list[str] | str:
    return patterns if isinstance(patterns, str) else list(patterns)


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


RSA, EC = KeyPair.generate("RS256", "rsa-1"), KeyPair.generate("ES256", "ec-1")


@contextmanager
def auth_gateways(redis_url: str, directory: Path) -> Iterator[dict[str, GatewayProcess]]:
    """Gateways "hs" (secret and API keys key-one, key-two), "rs" and "es" (PEM public key) and "jwks" (both keys).

    All of them require AUDIENCE and let anyone subscribe to ``public.*``. Key files are written to ``directory``.
    """
    (_, rsa_public), (_, ec_public) = RSA.write(directory), EC.write(directory)
    common = {**NO_KEYS, "SSE_GATEWAY_PUBLIC_CHANNELS": "public.*", "SSE_GATEWAY_JWT_AUDIENCE": AUDIENCE}
    keys = {
        "hs": {"SSE_GATEWAY_JWT_SECRET": SECRET, "SSE_GATEWAY_API_KEYS": "key-one,key-two"},
        "rs": {"SSE_GATEWAY_JWT_PUBLIC_KEY_FILE": str(rsa_public)},
        "es": {"SSE_GATEWAY_JWT_PUBLIC_KEY_FILE": str(ec_public)},
        "jwks": {"SSE_GATEWAY_JWT_JWKS_FILE": str(write_jwks(directory / "jwks.json", RSA, EC))},
    }
    processes = {name: GatewayProcess(redis_url, env={**common, **env}) for name, env in keys.items()}
    try:
        with ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(GatewayProcess.start, processes.values()))
        yield processes
    finally:
        for process in processes.values():
            process.stop()


@dataclass
class Result:
    """What one request got: the status, the body of a refusal, the data of the events read, and the entries
    found in the channel's buffer after a publish."""

    status: int
    headers: httpx.Headers
    body: bytes = b""
    events: list[str] = field(default_factory=list)
    written: int = 0


def read_stream(
    http: httpx.Client,
    redis_server: RedisProcess,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: list[tuple[str, str]] | None = None,
    publish_to: str | None = None,
    want: int = 1,
) -> Result:
    """Open a stream; when it is accepted, publish "live" to ``publish_to`` once subscribed, and read ``want`` events
    (or for 5 s)."""
    with http.stream("GET", url, headers=headers, params=params) as response:
        if response.status_code != 200:
            return Result(response.status_code, response.headers, response.read())
        if publish_to is not None:
            wait_until(lambda: redis_server.subscriptions(publish_to) > 0, what=f"subscription to {publish_to}")
            redis_server.publish_with_script(publish_to, "live")
        parser, events, deadline = SSEParser(), [], time.monotonic() + 5
        for chunk in response.iter_raw():
            events += [event.data for event in parser.feed(chunk)]
            if len(events) >= want or time.monotonic() > deadline:
                break
        return Result(200, response.headers, events=events)

"""Minting tokens in the format gateway.security.auth reads, for `sse-gateway token`, tests and examples."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.security.auth import CLAIM


def mint(
    *,
    subscribe: Sequence[str] = (),
    publish: Sequence[str] = (),
    ttl: float = 3600,
    secret: str | None = None,
    private_key_file: str | None = None,
    algorithm: str | None = None,
    subject: str | None = None,
    audience: str | None = None,
    key_id: str | None = None,
) -> str:
    """A signed JWT granting ``subscribe`` and ``publish`` channel globs for ``ttl`` seconds.

    HS256 with ``secret``, or RS256/ES256 with the PEM private key in ``private_key_file``.
    """
    now = int(time.time())
    claims: dict[str, object] = {
        "iat": now,
        "exp": now + int(ttl),
        CLAIM: {"subscribe": list(subscribe), "publish": list(publish)},
    }
    if subject:
        claims["sub"] = subject
    if audience:
        claims["aud"] = audience
    headers = {"kid": key_id} if key_id else None
    if private_key_file:
        key = load_pem_private_key(Path(private_key_file).read_bytes(), password=None)
        fitting = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        if algorithm not in (None, fitting):
            raise ValueError(f"{private_key_file} holds a key for {fitting}, not {algorithm}")
        return jwt.encode(claims, key, algorithm=fitting, headers=headers)
    if not secret:
        raise ValueError("give a secret (HS256) or a private key file (RS256/ES256)")
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers)

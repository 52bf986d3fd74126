"""The Authenticator's rules, on real Settings and real starlette requests: where a token is read, what a grant
covers, which keys verify which algorithms, when authentication is on, and what the access log redacts.

The same rules over HTTP, against real gateways, are in test_auth_http.py; serve and token in test_auth_serve.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jwt
import pytest
from starlette.requests import Request

from gateway.config import Settings
from gateway.errors import Forbidden, Unauthorized
from gateway.http.access_log import redact_query
from gateway.security.auth import OPEN, Authenticator, Grant, auth_enabled
from gateway.security.tokens import mint
from tests.auth_setup import AUDIENCE, EC, RSA, SECRET, KeyPair, claims, hs256, write_jwks


def request(*, bearer: str | None = None, cookie: str | None = None, query: str = "", **headers: str) -> Request:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    if bearer is not None:
        raw.append((b"authorization", f"Bearer {bearer}".encode()))
    if cookie is not None:
        raw.append((b"cookie", cookie.encode()))
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": query.encode()})


def authenticator(**settings: object) -> Authenticator:
    defaults = {"jwt_secret": SECRET, "jwt_audience": AUDIENCE, "public_channels": "public.*", "api_keys": "k1,k2"}
    return Authenticator(Settings(**{**defaults, **settings}))


def token(subscribe: list[str] | str = (), publish: list[str] | str = (), **extra: object) -> str:
    return hs256(claims(subscribe, publish, **extra))


def test_bearer_header_wins_over_cookie_and_cookie_over_query():
    auth = authenticator()
    header, cookie, query = token(["a"]), token(["b"]), token(["c"])
    both = request(bearer=header, cookie=f"sse_token={cookie}", query=f"access_token={query}")
    assert auth.for_subscribe(both, ["a"]).subscribe == ("a",)
    assert auth.for_subscribe(
        request(cookie=f"sse_token={cookie}", query=f"access_token={query}"), ["b"]
    ).subscribe == ("b",)
    assert auth.for_subscribe(request(query=f"access_token={query}"), ["c"]).subscribe == ("c",)
    with pytest.raises(Forbidden):
        auth.for_subscribe(both, ["b"])


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(scheme):
    assert authenticator().for_subscribe(request(authorization=f"{scheme} {token(['a'])}"), ["a"]).subscribe == ("a",)


def test_other_authorization_schemes_are_not_tokens():
    auth = authenticator()
    with pytest.raises(Unauthorized):
        auth.for_subscribe(request(authorization=f"Basic {token(['a'])}"), ["a"])
    fallback = auth.for_subscribe(request(authorization="Basic dTpw", cookie=f"sse_token={token(['a'])}"), ["a"])
    assert fallback.subscribe == ("a",), "the cookie's token, not the Basic credentials"


def test_cookie_name_is_configurable():
    auth = authenticator(auth_cookie="session")
    assert auth.for_subscribe(request(cookie=f"session={token(['a'])}"), ["a"]).subscribe == ("a",)
    with pytest.raises(Unauthorized):
        auth.for_subscribe(request(cookie=f"sse_token={token(['a'])}"), ["a"])


def test_grants_are_case_sensitive_globs():
    auth = authenticator()
    bearer = token(["stocks.*", "news"])
    for allowed in ["stocks.aapl", "stocks.eu.sap", "news"]:
        assert auth.for_subscribe(request(bearer=bearer), [allowed]).subscribe == ("stocks.*", "news")
    for refused in ["Stocks.aapl", "stocks", "news.eu", "newsx"]:
        with pytest.raises(Forbidden):
            auth.for_subscribe(request(bearer=bearer), [refused])


def test_grant_may_be_one_string_and_expires_with_the_token():
    exp = int(time.time()) + 120
    grant = authenticator().for_subscribe(request(bearer=token("a.*", "b", exp=exp)), ["a.x"])
    assert (grant.subscribe, grant.publish, grant.expires_at) == (("a.*",), ("b",), float(exp))


@pytest.mark.parametrize("sse", [["a"], "a", {"subscribe": [1]}, {"subscribe": {"a": 1}}])
def test_malformed_grant_claim_is_unauthorized(sse):
    with pytest.raises(Unauthorized):
        authenticator().for_subscribe(request(bearer=hs256(claims(sse=sse))), ["a"])


def test_token_without_grant_claim_reaches_public_channels_only():
    auth = authenticator()
    exp = int(time.time()) + 60
    bare = hs256(claims(sse=None, exp=exp))
    # The token grants nothing itself, but still ends the stream when it expires.
    assert auth.for_subscribe(request(bearer=bare), ["public.news"]) == Grant(expires_at=float(exp))
    with pytest.raises(Forbidden):
        auth.for_subscribe(request(bearer=bare), ["public.news", "private"])


def test_public_channels_need_no_token_but_a_bad_token_is_still_refused():
    auth = authenticator()
    assert auth.for_subscribe(request(), ["public.a", "public.b"]) == Grant(subscribe=("public.*",))
    with pytest.raises(Unauthorized):
        auth.for_subscribe(request(bearer="garbage"), ["public.a"])
    with pytest.raises(Unauthorized):
        auth.for_subscribe(request(), ["public.a", "private"])


def test_public_channels_never_grant_publishing():
    with pytest.raises(Unauthorized):
        authenticator().for_publish(request(), "public.a")
    with pytest.raises(Forbidden):
        authenticator().for_publish(request(bearer=token(["public.*"])), "public.a")


def test_api_keys_grant_publishing_only_and_a_wrong_key_beats_a_good_token():
    auth = authenticator()
    auth.for_publish(request(x_api_key="k2"), "anything")
    with pytest.raises(Unauthorized):
        auth.for_subscribe(request(x_api_key="k1"), ["anything"])
    with pytest.raises(Unauthorized):
        auth.for_publish(request(x_api_key="k3", bearer=token(publish=["*"])), "anything")
    with pytest.raises(Unauthorized):
        auth.for_publish(request(x_api_key=""), "anything")


def test_token_not_yet_valid_is_unauthorized():
    with pytest.raises(Unauthorized):
        authenticator().for_subscribe(request(bearer=token(["a"], nbf=int(time.time()) + 600)), ["a"])


def test_each_algorithm_uses_only_its_own_key_when_all_are_configured(tmp_path: Path):
    _, rsa_public = RSA.write(tmp_path)
    auth = authenticator(jwt_public_key_file=str(rsa_public))
    assert auth.for_subscribe(request(bearer=token(["a"])), ["a"]).subscribe == ("a",)
    assert auth.for_subscribe(request(bearer=RSA.sign(claims(["a"]))), ["a"]).subscribe == ("a",)
    for forged in [hs256(claims(["a"]), RSA.public_pem), EC.sign(claims(["a"])), hs256(claims(["a"]), "wrong")]:
        with pytest.raises(Unauthorized):
            auth.for_subscribe(request(bearer=forged), ["a"])


def test_jwks_key_is_chosen_by_kid_and_must_match_the_algorithm(tmp_path: Path):
    auth = Authenticator(Settings(jwt_jwks_file=str(write_jwks(tmp_path / "jwks.json", RSA, EC))))
    assert auth.for_subscribe(request(bearer=RSA.sign(claims(["a"], aud=None))), ["a"]).subscribe == ("a",)
    assert auth.for_subscribe(request(bearer=EC.sign(claims(["a"], aud=None))), ["a"]).subscribe == ("a",)
    rogue = KeyPair.generate("RS256", "rsa-1")
    refused = [
        rogue.sign(claims(["a"], aud=None)),
        RSA.sign(claims(["a"], aud=None), kid=False),
        KeyPair("RS256", "unknown", RSA.private_key).sign(claims(["a"], aud=None)),
        KeyPair("RS256", "ec-1", RSA.private_key).sign(claims(["a"], aud=None)),
        hs256(claims(["a"], aud=None), (tmp_path / "jwks.json").read_bytes(), kid="rsa-1"),
    ]
    for forged in refused:
        with pytest.raises(Unauthorized):
            auth.for_subscribe(request(bearer=forged), ["a"])


def test_audience_is_required_when_configured_and_refused_when_not():
    with pytest.raises(Unauthorized):
        authenticator().for_subscribe(request(bearer=token(["a"], aud=None)), ["a"])
    with pytest.raises(Unauthorized):
        authenticator(jwt_audience=None).for_subscribe(request(bearer=token(["a"])), ["a"])


def test_auth_off_grants_everything_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="gateway.security.auth"):
        auth = Authenticator(Settings(auth="off", host="0.0.0.0", jwt_secret=SECRET))
    assert auth.for_subscribe(request(), ["anything"]) is OPEN
    auth.for_publish(request(), "anything")
    assert "authentication is OFF" in caplog.text


@pytest.mark.parametrize(
    ("host", "auth", "keys", "enabled"),
    [
        ("127.0.0.1", "auto", {}, False),
        ("localhost", "auto", {}, False),
        ("::1", "auto", {}, False),
        ("0.0.0.0", "auto", {}, ValueError),
        ("10.1.2.3", "auto", {}, ValueError),
        ("0.0.0.0", "off", {}, False),
        ("127.0.0.1", "jwt", {}, ValueError),
        ("127.0.0.1", "maybe", {}, ValueError),
        ("0.0.0.0", "auto", {"api_keys": "k"}, True),
        ("0.0.0.0", "auto", {"jwt_jwks_file": "jwks.json"}, True),
        ("127.0.0.1", "jwt", {"jwt_secret": SECRET}, True),
    ],
)
def test_auth_is_on_with_keys_off_on_loopback_and_refused_when_exposed(host, auth, keys, enabled, caplog):
    settings = Settings(host=host, auth=auth, **keys)
    if enabled is ValueError:
        with pytest.raises(ValueError):
            auth_enabled(settings)
        return
    with caplog.at_level(logging.WARNING, logger="gateway.security.auth"):
        assert auth_enabled(settings) is enabled
    assert ("authentication is OFF" in caplog.text) is (not enabled)


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        ("access_token=abc.def.ghi", "access_token=[redacted]"),
        ("channel=a&access_token=abc&lastEventId=1-0", "channel=a&access_token=[redacted]&lastEventId=1-0"),
        ("ACCESS_TOKEN=abc&token=def&api_key=ghi", "ACCESS_TOKEN=[redacted]&token=[redacted]&api_key=[redacted]"),
        ("my_access_token=kept", "my_access_token=kept"),
        # starlette decodes parameter names, so the gateway accepts this spelling as access_token.
        ("access%5Ftoken=abc.def.ghi", "access%5Ftoken=[redacted]"),
        ("%61ccess_token=abc.def.ghi", "%61ccess_token=[redacted]"),
    ],
)
def test_access_log_redacts_credentials_in_the_query(query, redacted):
    assert redact_query(query) == redacted


def test_minted_tokens_carry_the_grant_the_gateway_reads(tmp_path: Path):
    auth = authenticator()
    minted = mint(subscribe=["a.*"], publish=["b"], ttl=60, secret=SECRET, audience=AUDIENCE, subject="me")
    grant = auth.for_subscribe(request(bearer=minted), ["a.x"])
    claims = jwt.decode(minted, options={"verify_signature": False})
    assert grant.publish == ("b",) and grant.expires_at == claims["exp"] == claims["iat"] + 60
    private, public = EC.write(tmp_path)
    minted = mint(subscribe=["a"], private_key_file=str(private), algorithm="ES256", audience=AUDIENCE)
    assert authenticator(jwt_public_key_file=str(public)).for_subscribe(request(bearer=minted), ["a"]).subscribe == (
        "a",
    )
    with pytest.raises(ValueError):
        mint(subscribe=["a"])


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The tokens pyjwt is asked to verify, in order: observed, not replaced (the real check still runs)."""
    seen: list[str] = []
    decode = jwt.decode

    def counting_decode(token: str, *args: object, **kwargs: object) -> dict:
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    return seen


def test_a_token_is_verified_once_and_its_kept_grant_still_ends_at_its_expiry(decoded):
    auth = authenticator()
    exp = int(time.time()) + 2
    short = token(["a"], exp=exp)
    for _ in range(3):
        assert auth.for_subscribe(request(bearer=short), ["a"]).expires_at == float(exp)
    assert decoded == [short]
    with pytest.raises(Forbidden):  # the kept grant is the token's: still only its channels
        auth.for_subscribe(request(bearer=short), ["b"])
    deadline = time.monotonic() + 10
    while time.time() < exp and time.monotonic() < deadline:  # the token's own clock, not a sleep for its own sake
        time.sleep(0.05)
    with pytest.raises(Unauthorized, match="expired"):
        auth.for_subscribe(request(bearer=short), ["a"])


def test_a_refused_token_is_checked_again_each_time(decoded):
    auth = authenticator()
    early = token(["a"], nbf=int(time.time()) + 600)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            auth.for_subscribe(request(bearer=early), ["a"])
    assert decoded == [early, early]

"""The Kinetic SSO cookie: a compact JWE (``dir`` / ``A256GCM``) around an RS256 JWS.

Kinetic's accounts service signs the claims with its RSA key, then encrypts the signed token
with a 32-byte key shared with every Kinetic app. The researcher is claim ``sub.uuid``.

Kinetic itself ignores ``exp``; we honour it when present, because an expired session that
still opens a workspace on real research data is worse than one more sign-in.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

from joserfc import jwe, jws
from joserfc.errors import JoseError
from joserfc.jwk import OctKey, RSAKey

JWE_HEADER = {"alg": "dir", "enc": "A256GCM"}
JWS_HEADER = {"alg": "RS256"}


class CookieError(ValueError):
    """The cookie could not be trusted. ``reason`` is safe to show; it never holds the cookie."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Researcher:
    uuid: str
    is_test: bool
    claims: dict


def load_encryption_key(value: str | bytes) -> OctKey:
    """The shared 32-byte key, given base64 (url-safe or standard) or as raw bytes."""
    raw = value if isinstance(value, bytes) else _b64decode(value.strip())
    if len(raw) != 32:
        raise ValueError(f"the SSO encryption key must be 32 bytes, got {len(raw)}")
    return OctKey.import_key(raw)


def load_signing_key(pem: str | bytes) -> RSAKey:
    return RSAKey.import_key(pem)


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(padded)
    except ValueError:
        return base64.b64decode(padded)


def encode(claims: dict, signing_key: RSAKey, encryption_key: OctKey) -> str:
    """Make a cookie the way Kinetic's accounts service does (used by the stand-in and tests)."""
    signed = jws.serialize_compact(JWS_HEADER, json.dumps(claims), signing_key)
    return jwe.encrypt_compact(JWE_HEADER, signed, encryption_key)


def decode(
    token: str, public_key: RSAKey, encryption_key: OctKey, now: float | None = None, leeway: int = 60
) -> Researcher:
    """Decrypt, verify and read a cookie. Raises CookieError with a reason a person can read."""
    if not token or token.count(".") != 4:
        raise CookieError("the sign-in cookie is not an encrypted Kinetic token")
    try:
        header = json.loads(_b64decode(token.split(".", 1)[0]))
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, TypeError):
        raise CookieError("the sign-in cookie is malformed") from None
    if header.get("alg") != "dir" or header.get("enc") != "A256GCM":
        raise CookieError("the sign-in cookie uses an unexpected encryption")
    try:
        signed = jwe.decrypt_compact(token, encryption_key, algorithms=["dir", "A256GCM"]).plaintext
    except (JoseError, ValueError, TypeError):
        raise CookieError("the sign-in cookie could not be decrypted (wrong key or tampered)") from None
    try:
        verified = jws.deserialize_compact(signed, public_key, algorithms=["RS256"])
        claims = json.loads(verified.payload)
    except (JoseError, ValueError, TypeError):
        raise CookieError("the sign-in cookie's signature is not valid") from None
    return researcher_from_claims(claims, now=now, leeway=leeway)


def researcher_from_claims(claims: dict, now: float | None = None, leeway: int = 60) -> Researcher:
    if not isinstance(claims, dict):
        raise CookieError("the sign-in cookie holds no claims")
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is not None:
        if not isinstance(exp, (int, float)):
            raise CookieError("the sign-in cookie has an invalid expiry")
        if exp + leeway < now:
            raise CookieError("the sign-in cookie has expired")
    sub = claims.get("sub")
    uuid = sub.get("uuid") if isinstance(sub, dict) else None
    if not isinstance(uuid, str) or not uuid:
        raise CookieError("the sign-in cookie names no researcher")
    return Researcher(uuid=uuid, is_test=bool(sub.get("is_test", False)), claims=claims)

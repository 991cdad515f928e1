"""Key material for the local world: made once into the state dir, read by the stand-in and the hub.

In production these come from Kinetic (the public half of the accounts signing key and the shared
encryption key); here the stand-in plays Kinetic, so it owns the private half.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from joserfc.jwk import RSAKey


@dataclass(frozen=True)
class StandinKeys:
    signing_key_pem: bytes  # private: only the stand-in signs cookies
    public_key_pem: bytes  # what the hub verifies with
    encryption_key: str  # 32 bytes, base64url, shared by stand-in and hub
    enclave_key: str  # Bearer key for Kinetic's enclave API (real data)


def _write_secret(path: Path, data: bytes) -> None:
    # O_EXCL: two processes racing to create keys cannot both write; the loser reads the winner's.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_standin_keys(state_dir: str | os.PathLike) -> StandinKeys:
    keydir = Path(state_dir) / "keys"
    keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = keydir / "sso_signing_key.pem"
    public = keydir / "sso_public_key.pem"
    enc = keydir / "sso_encryption_key"
    enclave = keydir / "kinetic_enclave_key"
    for path, make in (
        (private, lambda: RSAKey.generate_key(2048).as_pem(private=True)),
        (enc, lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")),
        (enclave, lambda: ("e" + secrets.token_hex(24)).encode()),
    ):
        if not path.exists():
            try:
                _write_secret(path, make())
            except FileExistsError:
                pass
    if not public.exists():
        pub = RSAKey.import_key(private.read_bytes()).as_pem(private=False)
        tmp = public.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pub)
        tmp.replace(public)
    return StandinKeys(
        signing_key_pem=private.read_bytes(),
        public_key_pem=public.read_bytes(),
        encryption_key=enc.read_text().strip(),
        enclave_key=enclave.read_text().strip(),
    )

"""Ed25519 signing keys for checkpoints, closures and archives.

The private key lives in a file the database never sees (so someone who can rewrite the
database cannot re-sign a rewritten chain); only public keys are stored and published.
A key is named by its key id: the first 16 bytes of SHA-256 of its raw public key, in hex.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = structlog.get_logger("audit")

CHECKPOINT_DOMAIN = b"circuit-audit-checkpoint-v1\x00"
MANIFEST_DOMAIN = b"circuit-audit-manifest-v1\x00"
ROTATION_DOMAIN = b"circuit-audit-key-rotation-v1\x00"


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_bytes)

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return self.private.sign(domain + message)


def key_id_of(public_bytes: bytes) -> str:
    return hashlib.sha256(public_bytes).digest()[:16].hex()


def verify_signature(public_bytes: bytes, domain: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_bytes).verify(signature, domain + message)
    except (InvalidSignature, ValueError):
        return False
    return True


def generate() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


def write_key(key: SigningKey, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)


def load_key(path: Path) -> SigningKey:
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return SigningKey(private)


def load_or_create(path: Path, *, signs: str = "the audit chain") -> SigningKey:
    """The signing key at ``path``; on first start, a new one, with a warning to back it up.

    The new key is written aside, then linked into place in one step: a process starting at
    the same moment either finds no file or a whole one, and the first link wins."""
    if not path.exists():
        key = generate()
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        write_key(key, aside)
        try:
            os.link(aside, path)
            log.warning("signing_key_created", path=str(path), key_id=key.key_id, signs=signs,
                        advice=f"back this file up and keep it off the database server: it signs {signs}")
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    return load_key(path)

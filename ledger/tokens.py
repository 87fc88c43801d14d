"""Voucher tokens (the QR) and public codes (for typing in): encoding, signing, verifying.

A token is ``CV1:`` followed by the Base45 (RFC 9285) encoding of 85 bytes:

    version (1) | voucher id (8, big-endian) | programme id (4) | expires_at (4, Unix seconds)
    | key id (4) | Ed25519 signature (64) over b"circuit-voucher-token-v1\\x00" + the 21 bytes before it

Base45 uses only characters of the QR alphanumeric mode, so the 132-character token fits a
QR code of version 8 at error-correction level Q. A public code is 11 random symbols of a
31-symbol alphabet and one check symbol (weighted sum modulo 31, a prime): it catches every
single-symbol typo and every swap of two adjacent symbols. See docs/tokens.md.

This module is pure: no database, no clock except when a caller passes one. Verification
needs only the public keys, so a merchant's phone can do it offline.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.errors import DomainError

TOKEN_PREFIX = "CV1:"
TOKEN_VERSION = 1
SIGNATURE_DOMAIN = b"circuit-voucher-token-v1\x00"
_BODY = struct.Struct(">BQIII")  # version, voucher id, programme id, expires_at, key id
SIGNATURE_BYTES = 64
TOKEN_BYTES = _BODY.size + SIGNATURE_BYTES
TOKEN_LENGTH = len(TOKEN_PREFIX) + (TOKEN_BYTES // 2) * 3 + (TOKEN_BYTES % 2) * 2

BASE45_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_BASE45_VALUE = {c: i for i, c in enumerate(BASE45_ALPHABET)}

# Crockford's Base32 symbols without Z (too close to 2 when written by hand): 31 symbols,
# a prime count, which is what makes the check symbol catch every single substitution.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXY"
CODE_MODULUS = len(CODE_ALPHABET)
CODE_DATA_LENGTH = 11
CODE_LENGTH = CODE_DATA_LENGTH + 1
_CODE_VALUE = {c: i for i, c in enumerate(CODE_ALPHABET)}
# Letters people type for a symbol that is not in the alphabet but means the same.
_CODE_ALIASES = {"O": "0", "I": "1", "L": "1"}
_CODE_SEPARATORS = " -"


class TokenMalformed(DomainError):
    code = "token_malformed"
    message = "This is not a Circuit voucher token."
    message_fr = "Ce n'est pas un titre Circuit."


class UnknownSigningKey(DomainError):
    code = "unknown_signing_key"
    message = "The token was signed by a key this scheme does not know."
    message_fr = "Le titre a été signé par une clé inconnue de ce réseau."


class BadSignature(DomainError):
    code = "bad_signature"
    message = "The token's signature is not valid: it was altered or forged."
    message_fr = "La signature du titre n'est pas valide : il a été modifié ou contrefait."


class CodeMalformed(DomainError):
    code = "code_malformed"
    message = "A voucher code has 12 characters (letters and digits)."
    message_fr = "Un code de titre comporte 12 caractères (lettres et chiffres)."


class CodeCheckFailed(DomainError):
    code = "code_check_failed"
    message = "This code has a typo: check each character."
    message_fr = "Ce code comporte une faute de frappe : vérifiez chaque caractère."


@dataclass(frozen=True, slots=True)
class TokenClaims:
    voucher_id: int
    programme_id: int
    expires_at: datetime
    key_id: str  # 8 hex digits


@dataclass(frozen=True, slots=True)
class VoucherKey:
    """An Ed25519 key pair that signs voucher tokens; the key id names its public half."""

    key_id: str
    private: Ed25519PrivateKey

    @property
    def public_bytes(self) -> bytes:
        return public_bytes_of(self.private)

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> VoucherKey:
        private = Ed25519PrivateKey.from_private_bytes(raw)
        return cls(key_id_of(public_bytes_of(private)), private)

    @classmethod
    def generate(cls) -> VoucherKey:
        private = Ed25519PrivateKey.generate()
        return cls(key_id_of(public_bytes_of(private)), private)

    @property
    def private_bytes(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )


def public_bytes_of(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public_bytes: bytes) -> str:
    """The first 4 bytes of SHA-256 of the raw 32-byte public key, in hex."""
    return hashlib.sha256(public_bytes).digest()[:4].hex()


# Base45 (RFC 9285): two bytes become three symbols, a last odd byte two.
def base45_encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        c, n = n % 45, n // 45
        d, e = n % 45, n // 45
        out += (BASE45_ALPHABET[c], BASE45_ALPHABET[d], BASE45_ALPHABET[e])
    if len(data) % 2:
        c, d = data[-1] % 45, data[-1] // 45
        out += (BASE45_ALPHABET[c], BASE45_ALPHABET[d])
    return "".join(out)


def base45_decode(encoded: str) -> bytes:
    if len(encoded) % 3 == 1:
        raise ValueError("a Base45 string cannot have a length of 3n+1")
    try:
        values = [_BASE45_VALUE[c] for c in encoded]
    except KeyError:
        raise ValueError("not a Base45 symbol") from None
    out = bytearray()
    for i in range(0, len(values), 3):
        chunk = values[i:i + 3]
        if len(chunk) == 3:
            n = chunk[0] + chunk[1] * 45 + chunk[2] * 2025
            if n > 0xFFFF:
                raise ValueError("a Base45 triple above 65535")
            out += bytes((n >> 8, n & 0xFF))
        else:
            n = chunk[0] + chunk[1] * 45
            if n > 0xFF:
                raise ValueError("a Base45 pair above 255")
            out.append(n)
    return bytes(out)


def sign_token(key: VoucherKey, *, voucher_id: int, programme_id: int, expires_at: datetime) -> str:
    """The QR text of a voucher, signed with ``key``."""
    seconds = int(expires_at.timestamp())
    if not 0 < voucher_id < 2**64 or not 0 < programme_id < 2**32 or not 0 < seconds < 2**32:
        raise ValueError("voucher id, programme id or expiry out of the token's range")
    body = _BODY.pack(TOKEN_VERSION, voucher_id, programme_id, seconds, int(key.key_id, 16))
    return TOKEN_PREFIX + base45_encode(body + key.private.sign(SIGNATURE_DOMAIN + body))


def read_token(token: str) -> tuple[TokenClaims, bytes, bytes]:
    """The claims of a token, the signed bytes and the signature, WITHOUT checking the signature."""
    token = token.strip()
    if not token.startswith(TOKEN_PREFIX) or len(token) != TOKEN_LENGTH:
        raise TokenMalformed()
    try:
        raw = base45_decode(token[len(TOKEN_PREFIX):])
    except ValueError:
        raise TokenMalformed() from None
    body, signature = raw[:_BODY.size], raw[_BODY.size:]
    version, voucher_id, programme_id, seconds, key_number = _BODY.unpack(body)
    if version != TOKEN_VERSION or voucher_id == 0 or programme_id == 0:
        raise TokenMalformed()
    claims = TokenClaims(voucher_id, programme_id, datetime.fromtimestamp(seconds, timezone.utc), f"{key_number:08x}")
    return claims, body, signature


def verify_token(token: str, public_keys: Mapping[str, bytes]) -> TokenClaims:
    """The claims of a token whose signature holds under one of ``public_keys`` (key id → raw
    32-byte Ed25519 public key). Expiry and revocation are the caller's to check: the token's
    expiry is what was true when it was signed, the database's is what is true now."""
    claims, body, signature = read_token(token)
    public = public_keys.get(claims.key_id)
    if public is None:
        raise UnknownSigningKey(key_id=claims.key_id)
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, SIGNATURE_DOMAIN + body)
    except (InvalidSignature, ValueError):
        raise BadSignature() from None
    return claims


def _check_symbol(values: list[int]) -> int:
    """The value v such that sum((i + 1) * s_i) + CODE_LENGTH * v == 0 (mod 31).

    The weights 1..12 are non-zero and two neighbours never share a weight modulo 31, and 31 is
    prime: so changing one symbol, or swapping two different adjacent symbols, always changes
    the sum. CODE_LENGTH is invertible modulo 31, hence the solution below.
    """
    total = sum((i + 1) * v for i, v in enumerate(values))
    return (-total * pow(CODE_LENGTH, -1, CODE_MODULUS)) % CODE_MODULUS


def code_checks(code: str) -> bool:
    """Whether a normalised 12-symbol code satisfies its check symbol."""
    values = [_CODE_VALUE[c] for c in code]
    return sum((i + 1) * v for i, v in enumerate(values)) % CODE_MODULUS == 0


def code_with_check(data: str) -> str:
    """``data`` (11 symbols of the alphabet) followed by its check symbol."""
    assert len(data) == CODE_DATA_LENGTH and all(c in _CODE_VALUE for c in data)
    return data + CODE_ALPHABET[_check_symbol([_CODE_VALUE[c] for c in data])]


def new_code() -> str:
    """A fresh random public code (11 random symbols: about 54 bits) with its check symbol."""
    return code_with_check("".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_DATA_LENGTH)))


def format_code(code: str) -> str:
    """A code as printed: three groups of four."""
    return "-".join(code[i:i + 4] for i in range(0, CODE_LENGTH, 4))


def parse_code(typed: str) -> str:
    """A code as typed (any case, spaces or dashes, O for 0, I or L for 1) → the stored code,
    or ``code_malformed`` / ``code_check_failed``."""
    cleaned = "".join(c for c in typed.upper() if c not in _CODE_SEPARATORS)
    cleaned = "".join(_CODE_ALIASES.get(c, c) for c in cleaned)
    if len(cleaned) != CODE_LENGTH or any(c not in _CODE_VALUE for c in cleaned):
        raise CodeMalformed()
    if not code_checks(cleaned):
        raise CodeCheckFailed()
    return cleaned

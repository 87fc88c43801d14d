"""Rotating wallet codes: what the resident's page shows as a QR, computed offline.

A code is ``CW1.<wallet id>.<8 digits>``: the digits are a TOTP (RFC 6238, HMAC-SHA1,
30-second step) of the wallet's own secret, so the page computes them with no network and a
screenshot is worthless a minute later. The server accepts one step of clock skew either
way and burns the (wallet, step) pair it accepted, in the payment's transaction. This module
only computes and checks codes; it never moves value.
"""

from __future__ import annotations

import hmac
import re
import time
from dataclasses import dataclass

import pyotp

from ledger.errors import DomainError

PREFIX = "CW1"
STEP_SECONDS = 30
DIGITS = 8
SKEW_STEPS = 1
SECRET_LENGTH = 32  # base32 characters: 160 bits, the HMAC-SHA1 block's natural key size
_CODE = re.compile(rf"^{PREFIX}\.([1-9][0-9]{{0,17}})\.([0-9]{{{DIGITS}}})$")


class WalletCodeInvalid(DomainError):
    code = "wallet_code_invalid"
    message = "This wallet code is not valid: it is malformed, too old, or not this wallet's."
    message_fr = "Ce code de porte-monnaie n'est pas valable : mal formé, trop ancien ou d'un autre porte-monnaie."


class WalletCodeUsed(DomainError):
    code = "wallet_code_used"
    message = "This wallet code was already used; ask the resident to show the current one."
    message_fr = "Ce code a déjà servi ; demandez au client d'afficher le code actuel."


@dataclass(frozen=True, slots=True)
class ScannedCode:
    wallet_id: int
    digits: str


def new_secret() -> str:
    return pyotp.random_base32(SECRET_LENGTH)


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)


def step_of(moment: float) -> int:
    return int(moment // STEP_SECONDS)


def code_for(wallet_id: int, secret: str, *, step: int) -> str:
    return f"{PREFIX}.{wallet_id}.{_totp(secret).generate_otp(step)}"


def parse(code: str) -> ScannedCode:
    match = _CODE.match(code.strip()) if isinstance(code, str) else None
    if match is None:
        raise WalletCodeInvalid(reason="malformed")
    return ScannedCode(wallet_id=int(match.group(1)), digits=match.group(2))


def matching_step(scanned: ScannedCode, secret: str, *, now: float | None = None) -> int:
    """The TOTP step the digits stand for, within the skew window; refuses anything else."""
    current = step_of(time.time() if now is None else now)
    totp = _totp(secret)
    for step in range(current - SKEW_STEPS, current + SKEW_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), scanned.digits):
            return step
    raise WalletCodeInvalid(reason="expired_or_wrong")

"""The server's receipt signing key (Ed25519) and its public half, served for anyone to check.

The private key lives in a file (``CIRCUIT_RECEIPT_KEY_FILE``, else
``$CIRCUIT_DATA_DIR/receipt-signing-key.pem``), never in the database: someone able to
rewrite the database still cannot forge a receipt a shop was given. The first process to
start creates it; the others read it.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from litestar import get

from audit.keys import SigningKey, load_or_create
from ledger.database import data_dir
from ledger.redemptions import RECEIPT_DOMAIN

KEYS_PATH = "/.well-known/circuit-receipt-keys.json"


def receipt_key_path() -> Path:
    configured = os.environ.get("CIRCUIT_RECEIPT_KEY_FILE")
    return Path(configured) if configured else data_dir() / "receipt-signing-key.pem"


@cache
def _key_at(path: Path) -> SigningKey:
    return load_or_create(path, signs="the receipts shops are given")


def receipt_signing_key() -> SigningKey:
    return _key_at(receipt_key_path())


@get(KEYS_PATH, exclude_from_auth=True, tags=["merchant app"])
async def receipt_keys() -> dict:
    """The key that signs receipts: Ed25519 over ``circuit-receipt-v1\\0`` + the receipt's
    canonical JSON (RFC 8785)."""
    key = receipt_signing_key()
    return {"keys": [{"key_id": key.key_id, "algorithm": "ed25519", "public_key": key.public_bytes.hex(),
                      "domain": RECEIPT_DOMAIN.decode().rstrip("\x00")}]}

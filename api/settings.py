"""Configuration read from the environment, in one place."""

from __future__ import annotations

import os
from pathlib import Path

from audit.keys import SigningKey, load_or_create
from ledger.database import data_dir


def audit_key_path() -> Path:
    """The audit signing key: ``CIRCUIT_AUDIT_KEY_FILE``, else ``$CIRCUIT_DATA_DIR/audit-signing-key.pem``."""
    configured = os.environ.get("CIRCUIT_AUDIT_KEY_FILE")
    return Path(configured) if configured else data_dir() / "audit-signing-key.pem"


def audit_signing_key() -> SigningKey:
    return load_or_create(audit_key_path())

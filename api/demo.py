"""A demo scheme to explore Circuit with: seeded once, recognised afterwards."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.auth import create_user
from api.features import features
from ledger.accounts import ensure_unit
from ledger.scheme import create_issuer, create_merchant, create_programme, issue, open_wallet

DEMO_ISSUER = "Association La Bulle (démo)"
DEMO_PASSWORD = "circuit-demo-2026"
DEMO_USERS = (
    ("operator@circuit.demo", "operator"),
    ("approver@circuit.demo", "approver"),
    ("auditor@circuit.demo", "auditor"),
    ("owner@librairie.demo", "merchant_owner"),
    ("resident@circuit.demo", "resident"),
)


async def seed_demo(conn: AsyncConnection) -> str:
    """Seed the demo scheme unless it is already there; returns what a person should read."""
    existing = await conn.scalar(text("SELECT id FROM issuers WHERE name = :name"), {"name": DEMO_ISSUER})
    if existing:
        return f"demo scheme already present (issuer {existing}); users as before, password {DEMO_PASSWORD}"

    await ensure_unit(conn, "BUL", "Bulle")
    issuer_id = await create_issuer(conn, name=DEMO_ISSUER, siren="732829320")
    bulle = await create_programme(conn, issuer_id=issuer_id, kind="local_currency", name="La Bulle", unit="BUL")
    gift = await create_programme(conn, issuer_id=issuer_id, kind="gift", name="Chèque cadeau Cœur de ville", unit="EUR")

    merchant_ids = []
    for legal, trade in (
        ("Librairie du Marché SARL", "Librairie du Marché"),
        ("Boulangerie Saint-Martial SAS", "Boulangerie Saint-Martial"),
        ("Fromagerie des Halles EURL", "Fromagerie des Halles"),
    ):
        merchant_id, _ = await create_merchant(
            conn, issuer_id=issuer_id, legal_name=legal, trade_name=trade, units=["BUL", "EUR"]
        )
        merchant_ids.append(merchant_id)

    wallet_ids = []
    for index, name in enumerate(("Camille Martin", "Louis Bernard", "Inès Petit"), start=1):
        wallet_id, account_id = await open_wallet(conn, programme=bulle, display_name=name)
        await issue(conn, key=f"demo-topup-{index}", programme=bulle, to_account_id=account_id,
                    amount_cents=5000, metadata={"channel": "demo"})
        wallet_ids.append(wallet_id)

    for email, role in DEMO_USERS:
        await create_user(
            conn, email=email, password=DEMO_PASSWORD, role=role, issuer_id=issuer_id,
            merchant_id=merchant_ids[0] if role.startswith("merchant") else None,
            wallet_id=wallet_ids[0] if role == "resident" else None,
        )

    users = ", ".join(email for email, _ in DEMO_USERS)
    lines = [
        f"demo scheme seeded: issuer {issuer_id}, programmes 'La Bulle' (BUL) and gift vouchers (EUR), "
        f"{len(merchant_ids)} merchants, {len(wallet_ids)} wallets with 50.00 BUL each.",
        f"users: {users} — password {DEMO_PASSWORD}",
    ]
    demo = {"issuer_id": issuer_id, "programmes": {"bulle": bulle.id, "gift": gift.id},
            "merchant_ids": merchant_ids, "wallet_ids": wallet_ids, "password": DEMO_PASSWORD,
            "users": dict(DEMO_USERS)}
    seeders = [module for module in features() if hasattr(module, "seed_demo")]
    for module in sorted(seeders, key=lambda module: getattr(module, "DEMO_ORDER", 50)):
        line = await module.seed_demo(conn, demo)
        if line:
            lines.append(line)
    return "\n".join(lines)

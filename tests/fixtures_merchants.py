"""Shared fixtures of the merchants capability.

``approved_merchant``: a factory making a merchant approved for given programmes (its ledger
account per unit opened), with an owner who has a TOTP second factor and is signed in.
``merchant_programme``: a programme of the test module's issuer to approve merchants for.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pyotp
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import create_user
from ledger import merchants
from ledger.accounts import ensure_unit
from ledger.scheme import Programme, create_issuer, create_programme

OWNER_PASSWORD = "shop-owner-password-1"
CATEGORIES = (("librairie", "Librairie", "Bookshop"), ("alimentation", "Alimentation", "Food"),
              ("supermarche", "Supermarché", "Supermarket"))

_siret_counter = iter(range(1, 10**6))


def fresh_siret() -> str:
    """A valid SIRET (Luhn) no other test has used."""
    from stdnum import luhn

    siren_body = f"8{next(_siret_counter) * 7919 % 10**7:07d}"
    body = siren_body + luhn.calc_check_digit(siren_body) + f"{uuid.uuid4().int % 10**4:04d}"
    return body + luhn.calc_check_digit(body)


@dataclass(frozen=True)
class ApprovedMerchant:
    id: int
    issuer_id: int
    accounts: dict[str, int]  # unit -> the merchant's ledger account
    programme_ids: tuple[int, ...]
    owner_id: int
    owner_email: str
    owner_password: str
    totp_secret: str
    headers: dict[str, str] = field(repr=False)  # the owner's Authorization header


@pytest_asyncio.fixture(scope="module")
async def merchant_issuer(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        issuer_id = await create_issuer(conn, name=f"Issuer {uuid.uuid4().hex[:6]}")
        for code, label_fr, label_en in CATEGORIES:
            await merchants.add_category(conn, issuer_id=issuer_id, code=code, label_fr=label_fr,
                                         label_en=label_en, actor="test")
    return issuer_id


@pytest_asyncio.fixture(scope="module")
async def merchant_programme(engine: AsyncEngine, merchant_issuer: int) -> Programme:
    async with engine.begin() as conn:
        return await create_programme(conn, issuer_id=merchant_issuer, kind="gift", name="Chèque cadeau", unit="EUR")


def application(issuer_id: int, programme_ids: list[int], **overrides) -> merchants.Application:
    values = dict(
        issuer_id=issuer_id, legal_name="Librairie du Marché SARL", trade_name="Librairie du Marché",
        siret=fresh_siret(), iban="FR7630006000011234567890189", category="librairie", naf_code="47.61Z",
        address_line="3 place du Marché", postcode="16000", commune="Angoulême", commune_insee="16015",
        email="contact@librairie.test", phone="05 45 00 00 00", programme_ids=tuple(programme_ids),
    )
    values.update(overrides)
    return merchants.Application(**values)


@pytest_asyncio.fixture(scope="module")
async def approved_merchant(engine: AsyncEngine, client, merchant_issuer: int, merchant_programme: Programme):
    """``await approved_merchant(programme_ids=None, category="librairie", issuer_id=None)``."""

    async def make(programme_ids: list[int] | None = None, category: str = "librairie",
                   issuer_id: int | None = None) -> ApprovedMerchant:
        programme_ids = programme_ids or [merchant_programme.id]
        issuer_id = issuer_id or merchant_issuer
        email = f"owner-{uuid.uuid4().hex[:8]}@shop.test"
        secret = pyotp.random_base32()
        async with engine.begin() as conn:
            merchant_id = await merchants.apply(conn, application(issuer_id, programme_ids, category=category), actor="test")
            by_programme = await merchants.approve(conn, merchant_id, programme_ids, actor="test")
            owner_id = await create_user(conn, email=email, password=OWNER_PASSWORD, role="merchant_owner",
                                         issuer_id=issuer_id, merchant_id=merchant_id, totp_secret=secret)
            units = dict((await conn.execute(
                text("SELECT id, unit FROM accounts WHERE id = ANY(:ids)"),
                {"ids": list(by_programme.values())})).all())
        response = await client.post("/auth/login", json={
            "email": email, "password": OWNER_PASSWORD, "totp_code": pyotp.TOTP(secret).now()})
        assert response.status_code == 200, response.text
        return ApprovedMerchant(
            id=merchant_id, issuer_id=issuer_id, accounts={unit: account for account, unit in units.items()},
            programme_ids=tuple(programme_ids), owner_id=owner_id, owner_email=email,
            owner_password=OWNER_PASSWORD, totp_secret=secret,
            headers={"Authorization": f"Bearer {response.json()['token']}"},
        )

    return make

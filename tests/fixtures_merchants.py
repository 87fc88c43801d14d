"""Shared fixtures of the merchants capability.

``approved_merchant``: a factory making a merchant approved for given programmes (its ledger
account per unit opened), with an owner who has a TOTP second factor and is signed in.
``merchant_programme``: a gift programme to approve merchants for (made with the vouchers
capability's ``make_programme``); ``merchant_issuer``: its issuer, with categories
``librairie``, ``alimentation`` and ``supermarche``.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import pyotp
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import create_user
from ledger import merchants
from ledger.accounts import ensure_unit
from ledger.programmes import ProgrammeRules

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


@pytest.fixture(scope="session", autouse=True)
def receipt_key_file(tmp_path_factory) -> str:
    """Receipts are signed with a key made for the test session, never the user's own."""
    path = str(tmp_path_factory.mktemp("receipt-key") / "receipt-signing-key.pem")
    previous = os.environ.get("CIRCUIT_RECEIPT_KEY_FILE")
    os.environ["CIRCUIT_RECEIPT_KEY_FILE"] = path
    yield path
    if previous is None:
        del os.environ["CIRCUIT_RECEIPT_KEY_FILE"]
    else:
        os.environ["CIRCUIT_RECEIPT_KEY_FILE"] = previous


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


async def ensure_categories(conn, issuer_id: int) -> None:
    for code, label_fr, label_en in CATEGORIES:
        await merchants.add_category(conn, issuer_id=issuer_id, code=code, label_fr=label_fr, label_en=label_en,
                                     actor="test")


@pytest_asyncio.fixture(scope="module")
async def merchant_programme(make_programme) -> ProgrammeRules:
    """A gift programme (vouchers' ``make_programme``) whose issuer has the test categories."""
    return await make_programme(name="Chèque cadeau (marchands)")


@pytest_asyncio.fixture(scope="module")
async def merchant_issuer(engine: AsyncEngine, merchant_programme: ProgrammeRules) -> int:
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        await ensure_categories(conn, merchant_programme.issuer_id)
    return merchant_programme.issuer_id


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
async def approved_merchant(engine: AsyncEngine, client, merchant_issuer: int, merchant_programme: ProgrammeRules):
    """``await approved_merchant(programme_ids=None, category="librairie")``: approved for the
    given programmes (all of one issuer; default: ``merchant_programme``)."""

    async def make(programme_ids: list[int] | None = None, category: str = "librairie") -> ApprovedMerchant:
        programme_ids = programme_ids or [merchant_programme.id]
        email = f"owner-{uuid.uuid4().hex[:8]}@shop.test"
        secret = pyotp.random_base32()
        async with engine.begin() as conn:
            issuer_id = await conn.scalar(text("SELECT issuer_id FROM programmes WHERE id = :id"), {"id": programme_ids[0]})
            await ensure_categories(conn, issuer_id)
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

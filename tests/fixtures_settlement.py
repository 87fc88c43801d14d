"""Shared fixtures of the settlement capability.

``settlement_scheme``: a factory making an issuer ready to settle (SIREN, VAT number, its own
IBAN), its gift, culture and local-currency programmes, two back-office users (an operator who
prepares, an approver) and helpers to add merchants and write takings the way the merchants and
wallets capabilities do (a ledger transfer and its ``merchant_takings`` row, in one transaction).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.auth import create_user
from fixtures_merchants import application
from ledger import merchants
from ledger.accounts import AccountKind, ensure_unit, open_account
from ledger.scheme import Programme, create_issuer, create_programme, issue
from ledger.transfers import Posting, transfer

PASSWORD = "settlement-test-password"
ISSUER_IBAN = "FR7630006000011234567890189"
MERCHANT_IBAN = "FR7630004000031234567890143"


@dataclass
class SettlementScheme:
    engine: AsyncEngine
    issuer_id: int
    gift: Programme
    culture: Programme
    bulle: Programme
    operator_id: int
    approver_id: int
    second_operator_id: int
    emails: dict[int, str]

    async def merchant(self, *, category: str = "librairie", name: str = "Librairie du Marché",
                       iban: str | None = MERCHANT_IBAN, bic: str | None = None) -> int:
        from fixtures_merchants import fresh_siret

        async with self.engine.begin() as conn:
            merchant_id = await merchants.apply(conn, application(
                self.issuer_id, [self.gift.id, self.culture.id, self.bulle.id], legal_name=f"{name} SARL",
                trade_name=name, category=category, siret=fresh_siret(), iban=MERCHANT_IBAN, bic=bic),
                actor="test")
            await merchants.approve(conn, merchant_id, [self.gift.id, self.culture.id, self.bulle.id], actor="test")
            if iban != MERCHANT_IBAN:
                await conn.execute(text("UPDATE merchants SET iban = :iban WHERE id = :id"),
                                   {"iban": iban, "id": merchant_id})
        return merchant_id

    async def take(self, merchant_id: int, programme: Programme, amount_cents: int, effective_at: datetime,
                   conn: AsyncConnection | None = None) -> int:
        """A redemption (vouchers) or payment (local currency) of ``amount_cents``; returns the taking id."""
        if conn is None:
            async with self.engine.begin() as conn:
                return await self.take(merchant_id, programme, amount_cents, effective_at, conn)
        holder = await open_account(conn, kind=AccountKind.VOUCHER if programme.kind != "local_currency"
                                    else AccountKind.WALLET, unit=programme.unit, owner_type="test")
        await issue(conn, key=f"test-issue-{uuid.uuid4()}", programme=programme, to_account_id=holder,
                    amount_cents=amount_cents)
        merchant_account = await merchants.merchant_account(conn, merchant_id, programme.unit)
        moved = await transfer(conn, key=f"test-take-{uuid.uuid4()}", kind="voucher.redeem",
                               postings=[Posting(holder, -amount_cents), Posting(merchant_account, amount_cents)],
                               effective_at=effective_at)
        return await conn.scalar(
            text("INSERT INTO merchant_takings (merchant_id, programme_id, kind, amount_cents, transfer_id, "
                 "effective_at) VALUES (:m, :p, :kind, :a, :t, :e) RETURNING id"),
            {"m": merchant_id, "p": programme.id, "kind": "payment" if programme.kind == "local_currency"
             else "redeem", "a": amount_cents, "t": moved.transfer_id, "e": effective_at})

    async def refund(self, taking_id: int, effective_at: datetime, conn: AsyncConnection | None = None) -> int:
        """Refund a taking in full, back to a holder account (the ledger refuses it if the
        merchant's account cannot cover it, as a real refund would be refused)."""
        if conn is None:
            async with self.engine.begin() as conn:
                return await self.refund(taking_id, effective_at, conn)
        taking = (await conn.execute(text("SELECT t.merchant_id, t.programme_id, t.amount_cents, p.unit "
                                          "FROM merchant_takings t JOIN programmes p ON p.id = t.programme_id "
                                          "WHERE t.id = :id"), {"id": taking_id})).one()
        holder = await open_account(conn, kind=AccountKind.VOUCHER, unit=taking.unit, owner_type="test")
        merchant_account = await merchants.merchant_account(conn, taking.merchant_id, taking.unit)
        moved = await transfer(conn, key=f"test-refund-{uuid.uuid4()}", kind="voucher.refund",
                               postings=[Posting(merchant_account, -taking.amount_cents),
                                         Posting(holder, taking.amount_cents)], effective_at=effective_at)
        return await conn.scalar(
            text("INSERT INTO merchant_takings (merchant_id, programme_id, kind, amount_cents, transfer_id, "
                 "refund_of, effective_at) VALUES (:m, :p, 'refund', :a, :t, :of, :e) RETURNING id"),
            {"m": taking.merchant_id, "p": taking.programme_id, "a": -taking.amount_cents,
             "t": moved.transfer_id, "of": taking_id, "e": effective_at})

    async def balance(self, account_id: int) -> int:
        async with self.engine.connect() as conn:
            return await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": account_id})


async def make_settlement_scheme(engine: AsyncEngine, users: SettlementScheme | None = None) -> SettlementScheme:
    """A fresh issuer; with ``users``, the back-office users of that earlier scheme act for it too."""
    tag = uuid.uuid4().hex[:6]
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        issuer_id = await create_issuer(conn, name=f"Cœur de Ville {tag}", siren="732829320")
        await conn.execute(text("UPDATE issuers SET vat_number = 'FR44732829320', address = '1 place de l''Hôtel de "
                                "Ville, 16000 Angoulême', debtor_iban = :iban, debtor_bic = 'AGRIFRPP' WHERE id = :id"),
                           {"iban": ISSUER_IBAN, "id": issuer_id})
        for code, fr, en in (("librairie", "Librairie", "Bookshop"), ("culture", "Culture", "Culture"),
                             ("alimentation", "Alimentation", "Food")):
            await merchants.add_category(conn, issuer_id=issuer_id, code=code, label_fr=fr, label_en=en, actor="test")
        gift = await create_programme(conn, issuer_id=issuer_id, kind="gift", name="Chèque cadeau", unit="EUR")
        culture = await create_programme(conn, issuer_id=issuer_id, kind="culture", name="Chèque culture", unit="EUR")
        bulle = await create_programme(conn, issuer_id=issuer_id, kind="local_currency", name="La Bulle", unit="BUL")
        if users is not None:
            return SettlementScheme(engine, issuer_id, gift, culture, bulle, users.operator_id, users.approver_id,
                                    users.second_operator_id, users.emails)
        emails = {}
        ids = []
        for role in ("operator", "approver", "operator"):
            email = f"{role}-{uuid.uuid4().hex[:8]}@settlement.test"
            user_id = await create_user(conn, email=email, password=PASSWORD, role=role, issuer_id=issuer_id)
            emails[user_id] = email
            ids.append(user_id)
    return SettlementScheme(engine, issuer_id, gift, culture, bulle, ids[0], ids[1], ids[2], emails)


@pytest_asyncio.fixture(scope="module")
async def settlement_scheme(engine: AsyncEngine):
    """``await settlement_scheme()``: a fresh issuer ready to settle (see SettlementScheme)."""

    async def make() -> SettlementScheme:
        return await make_settlement_scheme(engine)

    return make

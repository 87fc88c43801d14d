"""Property: any sequence of top-ups (online and at a counter), payments (by merchant QR and by
rotating code), the shop's refunds of them, transfers, retries, the shop's reconversion requests
and the month's settlement batch that converts them keeps units in circulation equal to the euro reserve, no wallet below
zero or above its tier's limits, and every refusal is the one a plain model predicts."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import text

from api.auth import create_user
from ledger import rotating_codes, topups
from ledger.accounts import ensure_unit
from ledger.check import check_ledger
from ledger.database import create_engine
from ledger.errors import InsufficientFunds
from ledger.redemptions import RefundExceedsBalance
from ledger.scheme import create_issuer, create_merchant, create_programme
from ledger.wallets import (
    Tier,
    WalletLimitExceeded,
    counter_credit,
    open_wallet,
    pay_merchant,
    refund_payment,
    set_tier,
    take_code_payment,
    transfer_between_wallets,
    wallet_secret,
    wallet_state,
)
from settlement import batches
from settlement.fees import create_rule
from settlement.periods import PARIS
from settlement.reconversion import request_reconversion

WALLETS = 3
HOLD_MAX = 6_000
RECEIVE_MAX = 9_000
amounts = st.integers(min_value=1, max_value=5_000)


@dataclass
class Model:
    balance: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    shop_spendable: int = 0  # the shop's units not yet set aside for reconversion
    set_aside: int = 0  # asked to be converted, not yet converted by a batch

    def can_receive(self, wallet: int, amount: int) -> bool:
        return self.balance[wallet] + amount <= HOLD_MAX and self.received[wallet] + amount <= RECEIVE_MAX

    def receive(self, wallet: int, amount: int) -> None:
        self.balance[wallet] += amount
        self.received[wallet] += amount


def wallets_machine(database_url: str):
    class WalletsMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.engine = create_engine(database_url, pool_size=2, max_overflow=0)
            self.model = Model()
            self.done: list[tuple[str, int, int, int]] = []  # key, payer, payee, amount (transfers)
            self.paid: list[tuple[int, int, int]] = []  # transfer id, wallet id, amount (payments to the shop)
            self.refunded: set[int] = set()
            self.run(self._open())

        def run(self, coroutine):
            return self.loop.run_until_complete(coroutine)

        async def _open(self) -> None:
            async with self.engine.begin() as conn:
                await ensure_unit(conn, "BUL", "Bulle")
                await set_tier(conn, Tier("property_tier", HOLD_MAX, RECEIVE_MAX, "small, to meet the limits often"))
                issuer = await create_issuer(conn, name=f"Property {uuid.uuid4().hex[:6]}", siren="732829320")
                await conn.execute(text(
                    "UPDATE issuers SET vat_number = 'FR44732829320', address = '1 place de la Mairie, 16000 Angoulême', "
                    "debtor_iban = 'FR7630004000031234567890143', debtor_bic = 'BNPAFRPP' WHERE id = :id"), {"id": issuer})
                self.programme = await create_programme(conn, issuer_id=issuer, kind="local_currency",
                                                        name="Bulle", unit="BUL")
                self.merchant, _ = await create_merchant(conn, issuer_id=issuer, legal_name="Shop SARL",
                                                         trade_name="Shop", units=["BUL"])
                await conn.execute(text(
                    "UPDATE merchants SET is_counter = true, iban = 'FR7630006000011234567890189', "
                    "bic = 'AGRIFRPP', category = 'bookshop' WHERE id = :m"), {"m": self.merchant})
                await create_rule(conn, issuer_id=issuer, actor="test", rate_bp=0, programme_id=self.programme.id)
                await create_rule(conn, issuer_id=issuer, actor="test", kind="reconversion", rate_bp=200,
                                  programme_id=self.programme.id)
                self.staff = {role: await create_user(conn, email=f"{role}-{uuid.uuid4().hex[:8]}@town.example",
                                                      password="property-password", role=role, issuer_id=issuer)
                              for role in ("operator", "approver")}
                self.issuer = issuer
                self.settled = False
                await conn.execute(text("INSERT INTO merchant_programmes (merchant_id, programme_id, status) "
                                        "VALUES (:m, :p, 'approved')"), {"m": self.merchant, "p": self.programme.id})
                self.wallets = []
                for i in range(WALLETS):
                    wallet = await open_wallet(conn, programme_id=self.programme.id, display_name=f"R{i}",
                                               email=f"r{i}-{uuid.uuid4().hex[:8]}@example.org", tier="property_tier")
                    self.wallets.append(wallet)
                    self.model.balance[wallet.id] = self.model.received[wallet.id] = 0
                self.secrets = {w.id: await wallet_secret(conn, w.id) for w in self.wallets}

        async def _write(self, operation):
            async with self.engine.begin() as conn:
                return await operation(conn)

        def teardown(self) -> None:
            self.run(self.engine.dispose())
            self.loop.close()

        def _credit(self, wallet_id: int, amount: int, operation) -> None:
            try:
                self.run(self._write(operation))
            except WalletLimitExceeded:
                assert not self.model.can_receive(wallet_id, amount)
                return
            assert self.model.can_receive(wallet_id, amount)
            self.model.receive(wallet_id, amount)

        @rule(index=st.integers(0, WALLETS - 1), amount=amounts)
        def online_top_up(self, index: int, amount: int) -> None:
            wallet = self.wallets[index]

            async def top_up(conn):
                intent = await topups.create_intent(conn, wallet_id=wallet.id, amount_cents=amount)
                await topups.apply_event(conn, topups.WebhookEvent(
                    uuid.uuid4().hex, topups.EVENT_SUCCEEDED, intent.public_id, amount))

            self._credit(wallet.id, amount, top_up)

        @rule(index=st.integers(0, WALLETS - 1), amount=amounts)
        def counter_top_up(self, index: int, amount: int) -> None:
            wallet = self.wallets[index]
            self._credit(wallet.id, amount, lambda c: counter_credit(
                c, key=uuid.uuid4().hex, merchant_id=self.merchant, wallet_id=wallet.id, amount_cents=amount,
                method="cash"))

        @rule(index=st.integers(0, WALLETS - 1), amount=amounts, by_code=st.booleans())
        def pay(self, index: int, amount: int, by_code: bool) -> None:
            wallet = self.wallets[index]
            if by_code:
                code = rotating_codes.code_for(wallet.id, self.secrets[wallet.id], step=rotating_codes.step_of(time.time()))
                operation = lambda c: take_code_payment(c, key=uuid.uuid4().hex, merchant_id=self.merchant, code=code,
                                                        amount_cents=amount)
            else:
                operation = lambda c: pay_merchant(c, key=uuid.uuid4().hex, wallet_id=wallet.id,
                                                   merchant_id=self.merchant, amount_cents=amount, channel="merchant_qr")
            try:
                payment = self.run(self._write(operation))
            except InsufficientFunds:
                assert self.model.balance[wallet.id] < amount
                return
            except rotating_codes.WalletCodeUsed:
                return  # this 30-second step's code already paid: refused, nothing moved
            assert self.model.balance[wallet.id] >= amount
            self.model.balance[wallet.id] -= amount
            self.model.shop_spendable += amount
            self.paid.append((payment.transfer_id, wallet.id, amount))

        @precondition(lambda self: self.paid)
        @rule(data=st.data())
        def shop_refunds_a_payment(self, data) -> None:
            transfer_id, wallet_id, amount = data.draw(st.sampled_from(self.paid))

            async def refund(conn):
                taking = await conn.scalar(text("SELECT id FROM merchant_takings WHERE transfer_id = :t"),
                                           {"t": transfer_id})
                return await refund_payment(conn, merchant_id=self.merchant, taking_id=taking, user_id=None,
                                            is_owner=True)

            try:
                result = self.run(self._write(refund))
            except RefundExceedsBalance:
                assert transfer_id not in self.refunded and self.model.shop_spendable < amount
                return
            except WalletLimitExceeded:
                assert transfer_id not in self.refunded and self.model.balance[wallet_id] + amount > HOLD_MAX
                return
            if transfer_id in self.refunded:
                assert not result.created  # a payment is refunded once; asking again returns that refund
                return
            assert result.created and self.model.shop_spendable >= amount
            assert self.model.balance[wallet_id] + amount <= HOLD_MAX
            self.refunded.add(transfer_id)
            self.model.shop_spendable -= amount
            self.model.balance[wallet_id] += amount  # given back: not a receipt for the monthly limit

        @rule(amount=amounts)
        def shop_asks_reconversion(self, amount: int) -> None:
            try:
                self.run(self._write(lambda c: request_reconversion(
                    c, merchant_id=self.merchant, amount_cents=amount, key=uuid.uuid4().hex, actor="owner")))
            except InsufficientFunds:
                assert self.model.shop_spendable < amount
                return
            assert self.model.shop_spendable >= amount
            self.model.shop_spendable -= amount
            self.model.set_aside += amount

        @precondition(lambda self: not self.settled and self.model.set_aside > 0)
        @rule()
        def month_is_settled(self) -> None:
            """The month's batch, prepared as if the month had ended: the reconversions asked
            leave circulation (once: one batch per period)."""
            today = datetime.now(timezone.utc).astimezone(PARIS)
            month_end = datetime(today.year + today.month // 12, today.month % 12 + 1, 1, tzinfo=PARIS)

            async def settle(conn):
                circulating = -(await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :a"),
                                                  {"a": self.programme.float_account_id}))
                batch = await batches.prepare(conn, issuer_id=self.issuer, period=f"{today:%Y-%m}",
                                              user_id=self.staff["operator"], now=month_end)
                await batches.approve(conn, batch_id=batch.id, user_id=self.staff["approver"])
                await batches.export(conn, batch_id=batch.id, user_id=self.staff["approver"], now=month_end)
                after = -(await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :a"),
                                            {"a": self.programme.float_account_id}))
                return circulating - after

            assert self.run(self._write(settle)) == self.model.set_aside
            self.model.set_aside = 0
            self.settled = True

        @rule(payer=st.integers(0, WALLETS - 1), payee=st.integers(0, WALLETS - 1), amount=amounts)
        def transfer(self, payer: int, payee: int, amount: int) -> None:
            if payer == payee:
                return
            src, dst = self.wallets[payer].id, self.wallets[payee].id
            key = uuid.uuid4().hex
            try:
                self.run(self._write(lambda c: transfer_between_wallets(
                    c, key=key, from_wallet_id=src, to_wallet_id=dst, amount_cents=amount)))
            except InsufficientFunds:
                assert self.model.balance[src] < amount and self.model.can_receive(dst, amount)
                return
            except WalletLimitExceeded:
                assert not self.model.can_receive(dst, amount)
                return
            assert self.model.balance[src] >= amount and self.model.can_receive(dst, amount)
            self.model.balance[src] -= amount
            self.model.receive(dst, amount)
            self.done.append((key, src, dst, amount))

        @precondition(lambda self: self.done)
        @rule(data=st.data())
        def retry_moves_nothing(self, data) -> None:
            key, src, dst, amount = data.draw(st.sampled_from(self.done))
            result = self.run(self._write(lambda c: transfer_between_wallets(
                c, key=key, from_wallet_id=src, to_wallet_id=dst, amount_cents=amount)))
            assert not result.created

        @invariant()
        def circulation_equals_reserve_and_wallets_stay_within_their_tier(self) -> None:
            async def read():
                async with self.engine.connect() as conn:
                    rows = (await conn.execute(text(
                        "SELECT w.id, a.balance_cents FROM wallets w JOIN accounts a ON a.id = w.account_id "
                        "WHERE w.id = ANY(:ids)"), {"ids": [w.id for w in self.wallets]})).all()
                    received = {w.id: (await wallet_state(conn, w.id)).received_month_cents for w in self.wallets}
                    return dict(rows), received, await check_ledger(conn)

            balances, received, report = self.run(read())
            assert report.ok, report.discrepancies
            assert balances == self.model.balance and received == self.model.received
            assert all(0 <= b <= HOLD_MAX for b in balances.values())
            assert all(r <= RECEIVE_MAX for r in received.values())

    return WalletsMachine


def test_random_wallet_histories_with_reconversions_keep_circulation_equal_to_reserve_and_tiers(database_url):
    machine = wallets_machine(database_url)
    machine.TestCase.settings = settings(
        max_examples=25, stateful_step_count=20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    machine.TestCase().runTest()

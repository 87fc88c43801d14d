"""Property: any sequence of transfers, holds, posts, voids, reversals and retries keeps the
ledger's invariants, and its balances equal those of a plain in-memory model."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger.accounts import AccountKind, ensure_unit, open_account
from ledger.balances import balance
from ledger.check import check_ledger
from ledger.database import create_engine
from ledger.errors import AlreadyReversed, HoldNotPending, InsufficientFunds
from ledger.transfers import Posting, hold, post_hold, reverse, transfer, void_hold

WALLETS = 4
amounts = st.integers(min_value=1, max_value=30_000)


@dataclass
class Model:
    balance: dict[int, int] = field(default_factory=dict)
    pending_debits: dict[int, int] = field(default_factory=dict)
    floors: dict[int, int | None] = field(default_factory=dict)

    def available(self, account: int) -> int:
        return self.balance[account] - self.pending_debits[account]

    def fits(self, account: int, amount: int) -> bool:
        floor = self.floors[account]
        return floor is None or self.available(account) - amount >= floor


def ledger_machine(database_url: str):
    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.engine = create_engine(database_url, pool_size=2, max_overflow=0)
            self.model = Model()
            self.transfers: list[tuple[str, int, int, int, int]] = []  # key, id, source, target, amount
            self.reversed: set[int] = set()
            self.holds: dict[int, tuple[int, int, int]] = {}  # open holds: id -> source, target, amount
            self.run(self._open())

        def run(self, coroutine):
            return self.loop.run_until_complete(coroutine)

        async def _open(self) -> None:
            async with self.engine.begin() as conn:
                await ensure_unit(conn, "BUL", "Bulle")
                self.float_id = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="BUL")
                self.wallets = [await open_account(conn, kind=AccountKind.WALLET, unit="BUL") for _ in range(WALLETS)]
            self.accounts = [self.float_id, *self.wallets]
            for account in self.accounts:
                self.model.balance[account] = 0
                self.model.pending_debits[account] = 0
            self.model.floors = {self.float_id: None, **{w: 0 for w in self.wallets}}

        async def _write(self, operation):
            async with self.engine.begin() as conn:
                return await operation(conn)

        def teardown(self) -> None:
            self.run(self.engine.dispose())
            self.loop.close()

        @rule(payer=st.integers(0, WALLETS), payee=st.integers(0, WALLETS), amount=amounts)
        def move(self, payer: int, payee: int, amount: int) -> None:
            if payer == payee:
                return
            src, dst = self.accounts[payer], self.accounts[payee]
            key = uuid.uuid4().hex
            try:
                result = self.run(self._write(lambda c: transfer(
                    c, key=key, kind="payment", postings=[Posting(src, -amount), Posting(dst, amount)])))
            except InsufficientFunds:
                assert not self.model.fits(src, amount)
                return
            assert self.model.fits(src, amount)
            self.model.balance[src] -= amount
            self.model.balance[dst] += amount
            self.transfers.append((key, result.transfer_id, src, dst, amount))

        @precondition(lambda self: self.transfers)
        @rule(data=st.data())
        def retry_is_harmless(self, data) -> None:
            key, transfer_id, src, dst, amount = data.draw(st.sampled_from(self.transfers))
            result = self.run(self._write(lambda c: transfer(
                c, key=key, kind="payment", postings=[Posting(src, -amount), Posting(dst, amount)])))
            assert (result.transfer_id, result.created) == (transfer_id, False)

        @rule(payer=st.integers(1, WALLETS), payee=st.integers(0, WALLETS), amount=amounts)
        def reserve(self, payer: int, payee: int, amount: int) -> None:
            if payer == payee:
                return
            src, dst = self.accounts[payer], self.accounts[payee]
            expires = datetime.now(timezone.utc) + timedelta(hours=1)
            try:
                result = self.run(self._write(lambda c: hold(
                    c, key=uuid.uuid4().hex, kind="payment", expires_at=expires,
                    postings=[Posting(src, -amount), Posting(dst, amount)])))
            except InsufficientFunds:
                assert not self.model.fits(src, amount)
                return
            assert self.model.fits(src, amount)
            self.model.pending_debits[src] += amount
            self.holds[result.transfer_id] = (src, dst, amount)

        @precondition(lambda self: self.holds)
        @rule(data=st.data())
        def settle_hold(self, data) -> None:
            hold_id = data.draw(st.sampled_from(sorted(self.holds)))
            src, dst, held = self.holds.pop(hold_id)
            action = data.draw(st.sampled_from(["post_all", "post_part", "void"]))
            self.model.pending_debits[src] -= held
            if action == "void":
                self.run(self._write(lambda c: void_hold(c, key=uuid.uuid4().hex, hold_id=hold_id)))
                amount = 0
            else:
                amount = held if action == "post_all" else data.draw(st.integers(1, held))
                self.run(self._write(lambda c: post_hold(
                    c, key=uuid.uuid4().hex, hold_id=hold_id, amount_cents=amount)))
            self.model.balance[src] -= amount
            self.model.balance[dst] += amount
            try:
                self.run(self._write(lambda c: void_hold(c, key=uuid.uuid4().hex, hold_id=hold_id)))
            except HoldNotPending:
                pass
            else:
                raise AssertionError("a resolved hold was voided again")

        @precondition(lambda self: self.transfers)
        @rule(data=st.data())
        def reverse_one(self, data) -> None:
            _, transfer_id, src, dst, amount = data.draw(st.sampled_from(self.transfers))
            try:
                self.run(self._write(lambda c: reverse(c, key=uuid.uuid4().hex, transfer_id=transfer_id)))
            except AlreadyReversed:
                assert transfer_id in self.reversed
                return
            except InsufficientFunds:
                assert transfer_id not in self.reversed and not self.model.fits(dst, amount)
                return
            assert transfer_id not in self.reversed and self.model.fits(dst, amount)
            self.reversed.add(transfer_id)
            self.model.balance[src] += amount
            self.model.balance[dst] -= amount

        @invariant()
        def balances_match_the_model_and_the_ledger_checks_out(self) -> None:
            async def read():
                async with self.engine.connect() as conn:
                    return [await balance(conn, a) for a in self.accounts], await check_ledger(conn)

            balances, report = self.run(read())
            for found in balances:
                assert found.balance_cents == self.model.balance[found.account_id]
                assert found.available_cents == self.model.available(found.account_id)
            assert report.ok, report.discrepancies

    return LedgerMachine


def test_random_histories_keep_every_invariant(database_url):
    machine = ledger_machine(database_url)
    machine.TestCase.settings = settings(
        max_examples=30, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    machine.TestCase().runTest()

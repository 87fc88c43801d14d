"""Residents' wallets in the local currency: opening (one or a town's whole campaign), tier
limits, resident transfers, payments to merchants, counter credits and town payments.

Every credit of a wallet first locks the wallet rows it credits (in id order) and checks
their tier's limits on what the ledger holds, then moves value with one ``transfer()`` in
the same transaction: two credits racing for the last euro of a limit cannot both pass.
Balances are never written here. Personal data stays in ``wallets`` (erasable), never in
ledger metadata (append-only): transfers name wallets by id only.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append as audit_append
from ledger.errors import AlreadyReversed, DomainError, IdempotencyConflict, InsufficientFunds, InvalidInput, NotFound
from ledger.rotating_codes import WalletCodeUsed, matching_step, new_secret, parse
from ledger.scheme import Programme, get_programme
from ledger.tokens import format_code
from ledger.redemptions import (
    REFUND_WINDOW_DAYS_DEFAULT,
    AlreadyRefunded,
    RefundExceedsBalance,
    RefundNotAllowed,
    TakingNotFound,
)
from ledger.takings import paris_day
from ledger.transfers import AMOUNT_CENTS_MAX, Posting, TransferResult, reverse, transfer
from ledger.vouchers import voucher_for_code

NAME_LENGTH_MAX = 200
CAMPAIGN_ROWS_MAX = 20_000
CSV_ERRORS_SHOWN_MAX = 50
CLIENT_KEY_LENGTH_MAX = 80
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_AMOUNT = re.compile(r"^[0-9]{1,10}(\.[0-9]{1,2})?$")


class WalletNotFound(NotFound):
    code = "wallet_not_found"
    message = "No wallet has this id."
    message_fr = "Aucun porte-monnaie ne correspond."


class WalletLimitExceeded(DomainError):
    code = "wallet_limit_exceeded"
    message = "This would take the wallet past its tier's limit."
    message_fr = "Cette opération dépasserait le plafond du porte-monnaie."


class WalletContactTaken(DomainError):
    code = "wallet_contact_taken"
    message = "A wallet with this email or phone already exists in this programme."
    message_fr = "Un porte-monnaie existe déjà avec cet e-mail ou ce téléphone."


class MerchantNotPayable(DomainError):
    code = "merchant_not_payable"
    message = "This merchant cannot be paid in this currency (unknown, not approved, or another scheme)."
    message_fr = "Ce commerçant ne peut pas être payé dans cette monnaie."


class NotACounter(DomainError):
    code = "not_a_counter"
    message = "Only an approved exchange counter of this currency can credit wallets against euros."
    message_fr = "Seul un comptoir de change agréé pour cette monnaie peut créditer un porte-monnaie contre des euros."


class VoucherInAnotherWallet(DomainError):
    code = "voucher_in_another_wallet"
    message = "This voucher was already added to another wallet."
    message_fr = "Ce bon a déjà été ajouté à un autre porte-monnaie."


class CsvInvalid(DomainError):
    code = "csv_invalid"
    message = "The file has errors; nothing was done. Fix the lines listed and send it again."
    message_fr = "Le fichier contient des erreurs ; rien n'a été fait. Corrigez les lignes indiquées."


@dataclass(frozen=True, slots=True)
class Tier:
    tier: str
    hold_max_cents: int
    receive_month_max_cents: int
    description: str


@dataclass(frozen=True, slots=True)
class Wallet:
    id: int
    programme_id: int
    account_id: int
    display_name: str
    email: str | None
    phone: str | None
    tier: str
    campaign_id: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WalletState:
    wallet: Wallet
    unit: str
    balance_cents: int
    received_month_cents: int
    limits: Tier


@dataclass(frozen=True, slots=True)
class Payment:
    transfer_id: int
    created: bool
    merchant_id: int
    wallet_id: int | None
    amount_cents: int
    programme_id: int
    unit: str


@dataclass(frozen=True, slots=True)
class CodePreview:
    """What a shop may know of a scanned wallet code before taking a payment: that it is
    valid now and in which currency; not the holder, not the balance."""

    wallet_id: int
    programme_id: int
    programme_name: str
    unit: str


@dataclass(frozen=True, slots=True)
class CampaignRow:
    line: int
    display_name: str
    email: str | None
    phone: str | None
    amount_cents: int


@dataclass(frozen=True, slots=True)
class PayoutRow:
    line: int
    recipient_type: str  # wallet | merchant
    recipient_id: int
    amount_cents: int
    label: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    key: str
    transfer_id: int | None
    created: bool
    count: int
    total_cents: int
    campaign_id: int | None = None


def _client_key(key: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= CLIENT_KEY_LENGTH_MAX:
        raise InvalidInput(f"the idempotency key is 1 to {CLIENT_KEY_LENGTH_MAX} characters")
    return key


def _amount(amount_cents: int) -> int:
    if type(amount_cents) is not int or not 0 < amount_cents <= AMOUNT_CENTS_MAX:
        raise InvalidInput("the amount is a positive whole number of cents", amount_cents=str(amount_cents))
    return amount_cents


def _contact(email: str | None, phone: str | None) -> tuple[str | None, str | None]:
    email = (email or "").strip().lower() or None
    phone = re.sub(r"[ .-]", "", phone or "") or None
    if email is None and phone is None:
        raise InvalidInput("give an email or a phone number", message_fr="Indiquez un e-mail ou un téléphone.")
    if email is not None and (len(email) > 254 or not _EMAIL.match(email)):
        raise InvalidInput("the email is not valid", message_fr="L'e-mail n'est pas valide.")
    if phone is not None and not _PHONE.match(phone):
        raise InvalidInput("the phone is in international form, e.g. +33612345678",
                           message_fr="Le téléphone s'écrit au format international, ex. +33612345678.")
    return email, phone


def _name(display_name: str) -> str:
    name = (display_name or "").strip()
    if not 1 <= len(name) <= NAME_LENGTH_MAX:
        raise InvalidInput(f"the name is 1 to {NAME_LENGTH_MAX} characters", message_fr="Le nom est obligatoire.")
    return name


async def local_programme(conn: AsyncConnection, programme_id: int | None = None) -> Programme:
    """The local-currency programme named, or the only one when none is named."""
    if programme_id is None:
        ids = (await conn.execute(text("SELECT id FROM programmes WHERE kind = 'local_currency' ORDER BY id LIMIT 2"))).scalars().all()
        if len(ids) != 1:
            raise InvalidInput("name the local-currency programme (programme_id)", candidates=len(ids))
        programme_id = ids[0]
    programme = await get_programme(conn, programme_id)
    if programme.kind != "local_currency":
        raise InvalidInput("wallets hold a local currency: this programme is not one", programme_id=programme_id)
    return programme


# --- opening -----------------------------------------------------------------------------

_WALLET_COLUMNS = "id, programme_id, account_id, display_name, email, phone, tier, campaign_id, created_at"

# Wallets and their accounts are created together, ids drawn first from both identities so
# the account can name its wallet as owner: one statement however many rows.
_OPEN_SQL = text(
    """
    WITH rows AS (
        SELECT r.*, nextval(pg_get_serial_sequence('wallets', 'id')) AS wallet_id,
                    nextval(pg_get_serial_sequence('accounts', 'id')) AS account_id
        FROM unnest(CAST(:names AS text[]), CAST(:emails AS text[]), CAST(:phones AS text[]),
                    CAST(:secrets AS text[])) WITH ORDINALITY r(name, email, phone, secret, n)
    ), accounts_made AS (
        INSERT INTO accounts (id, kind, unit, owner_type, owner_id, floor_cents)
        OVERRIDING SYSTEM VALUE
        SELECT r.account_id, 'wallet', :unit, 'wallet', r.wallet_id::text, 0 FROM rows r ORDER BY r.n
        RETURNING id
    )
    INSERT INTO wallets (id, programme_id, display_name, account_id, email, phone, tier, totp_secret, campaign_id)
    OVERRIDING SYSTEM VALUE
    SELECT r.wallet_id, :programme_id, r.name, m.id, r.email, r.phone, :tier, r.secret, :campaign_id
    FROM rows r JOIN accounts_made m ON m.id = r.account_id
    ORDER BY r.n
    RETURNING id, account_id
    """
)


async def _insert_wallets(
    conn: AsyncConnection, programme: Programme, rows: Sequence[tuple[str, str | None, str | None]],
    *, tier: str, campaign_id: int | None,
) -> list[tuple[int, int]]:
    try:
        made = (
            await conn.execute(
                _OPEN_SQL,
                {"names": [r[0] for r in rows], "emails": [r[1] for r in rows], "phones": [r[2] for r in rows],
                 "secrets": [new_secret() for _ in rows], "unit": programme.unit,
                 "programme_id": programme.id, "tier": tier, "campaign_id": campaign_id},
            )
        ).all()
    except IntegrityError as error:
        constraint = getattr(getattr(error.orig, "__cause__", None), "constraint_name", "") or ""
        if constraint in ("wallets_email", "wallets_phone"):
            raise WalletContactTaken() from None
        if "tier" in constraint:
            raise InvalidInput("unknown tier", tier=tier) from None
        raise
    return sorted((int(w), int(a)) for w, a in made)


async def open_wallet(
    conn: AsyncConnection, *, programme_id: int | None, display_name: str, email: str | None = None,
    phone: str | None = None, tier: str = "unverified",
) -> Wallet:
    """A resident's wallet: a name, an email or a phone, a tier, and a zero balance."""
    programme = await local_programme(conn, programme_id)
    email, phone = _contact(email, phone)
    [(wallet_id, _)] = await _insert_wallets(conn, programme, [(_name(display_name), email, phone)],
                                             tier=tier, campaign_id=None)
    await audit_append(conn, event_type="wallet.opened",
                       payload={"wallet_id": wallet_id, "programme_id": programme.id, "tier": tier})
    return await get_wallet(conn, wallet_id)


async def get_wallet(conn: AsyncConnection, wallet_id: int) -> Wallet:
    row = (await conn.execute(text(f"SELECT {_WALLET_COLUMNS} FROM wallets WHERE id = :id"), {"id": wallet_id})).one_or_none()
    if row is None:
        raise WalletNotFound(wallet_id=wallet_id)
    return Wallet(*row)


async def wallet_secret(conn: AsyncConnection, wallet_id: int) -> str:
    """The wallet's TOTP secret; a wallet opened before rotating codes existed gets one now."""
    found = (await conn.execute(text("SELECT totp_secret FROM wallets WHERE id = :id"), {"id": wallet_id})).one_or_none()
    if found is None:
        raise WalletNotFound(wallet_id=wallet_id)
    if found.totp_secret is not None:
        return found.totp_secret
    return (
        await conn.execute(
            text("UPDATE wallets SET totp_secret = coalesce(totp_secret, :fresh) WHERE id = :id RETURNING totp_secret"),
            {"id": wallet_id, "fresh": new_secret()},
        )
    ).scalar_one()


# --- tiers and limits --------------------------------------------------------------------

async def tiers(conn: AsyncConnection) -> list[Tier]:
    rows = await conn.execute(text("SELECT tier, hold_max_cents, receive_month_max_cents, description FROM wallet_tiers ORDER BY hold_max_cents, tier"))
    return [Tier(*row) for row in rows]


async def set_tier(conn: AsyncConnection, tier: Tier) -> Tier:
    """Create or change a tier's limits (takes effect for the next credit)."""
    if not re.match(r"^[a-z][a-z_]{1,31}$", tier.tier):
        raise InvalidInput("a tier name is 2 to 32 lowercase letters or '_'")
    if tier.hold_max_cents < 0 or tier.receive_month_max_cents < 0:
        raise InvalidInput("limits are zero or more cents")
    await conn.execute(
        text(
            """
            INSERT INTO wallet_tiers (tier, hold_max_cents, receive_month_max_cents, description)
            VALUES (:tier, :hold, :receive, :description)
            ON CONFLICT (tier) DO UPDATE SET hold_max_cents = excluded.hold_max_cents,
                receive_month_max_cents = excluded.receive_month_max_cents, description = excluded.description
            """
        ),
        {"tier": tier.tier, "hold": tier.hold_max_cents, "receive": tier.receive_month_max_cents,
         "description": tier.description[:200]},
    )
    await audit_append(conn, event_type="wallet.tier_set", payload={
        "tier": tier.tier, "hold_max_cents": tier.hold_max_cents,
        "receive_month_max_cents": tier.receive_month_max_cents})
    return tier


async def set_wallet_tier(conn: AsyncConnection, *, wallet_id: int, tier: str) -> Wallet:
    try:
        found = (await conn.execute(text("UPDATE wallets SET tier = :tier WHERE id = :id RETURNING id"),
                                    {"id": wallet_id, "tier": tier})).scalar()
    except IntegrityError:
        raise InvalidInput("unknown tier", tier=tier) from None
    if found is None:
        raise WalletNotFound(wallet_id=wallet_id)
    await audit_append(conn, event_type="wallet.tier_changed", payload={"wallet_id": wallet_id, "tier": tier})
    return await get_wallet(conn, wallet_id)


# What a wallet received since the start of the calendar month (Paris time), reversals aside.
_RECEIVED_MONTH = """
    SELECT coalesce(sum(p.amount_cents), 0) FROM postings p JOIN transfers t ON t.id = p.transfer_id
    WHERE p.account_id = {account} AND p.amount_cents > 0 AND t.phase IN ('posted', 'post_pending')
      AND t.reverses_id IS NULL
      AND t.effective_at >= (date_trunc('month', now() AT TIME ZONE 'Europe/Paris') AT TIME ZONE 'Europe/Paris')
"""

# Lock every wallet to be credited, in id order like the ledger. A separate statement from
# the check: under READ COMMITTED a statement that waited for a lock still reads the other
# tables as they were when it began, so the check must start after the locks are held.
_LOCK_SQL = text(
    """
    SELECT w.id FROM wallets w WHERE w.account_id = ANY(CAST(:account_ids AS bigint[]))
    ORDER BY w.id FOR UPDATE
    """
)

# The first locked wallet whose tier a credit would break, with what it holds and received.
_GUARD_SQL = text(
    f"""
    WITH credit AS (
        SELECT c.account_id, sum(c.amount) AS amount
        FROM unnest(CAST(:account_ids AS bigint[]), CAST(:amounts AS bigint[])) c(account_id, amount)
        GROUP BY c.account_id
    )
    SELECT w.id, w.tier, t.hold_max_cents, t.receive_month_max_cents, a.balance_cents, c.amount, r.received
    FROM credit c JOIN wallets w ON w.account_id = c.account_id
    JOIN accounts a ON a.id = w.account_id JOIN wallet_tiers t ON t.tier = w.tier
    CROSS JOIN LATERAL ({_RECEIVED_MONTH.format(account='w.account_id')}) r(received)
    WHERE a.balance_cents + c.amount > t.hold_max_cents
       OR (:receipt AND r.received + c.amount > t.receive_month_max_cents)
    ORDER BY w.id LIMIT 1
    """
)


async def guard_credits(conn: AsyncConnection, credits: Sequence[Posting], *, receipt: bool = True) -> None:
    """Lock the wallets among ``credits`` (account id, positive amount) and refuse, with the
    limit it would break, any credit past a wallet's tier. Non-wallet accounts are ignored.
    A refund (``receipt=False``) gives back what was spent: only the holding limit applies."""
    if not credits:
        return
    params = {"account_ids": [c.account_id for c in credits], "amounts": [c.amount_cents for c in credits],
              "receipt": receipt}
    await conn.execute(_LOCK_SQL, params)
    row = (await conn.execute(_GUARD_SQL, params)).one_or_none()
    if row is None:
        return
    wallet_id, tier, hold_max, receive_max, balance_cents, amount, received = row
    if balance_cents + amount > hold_max:
        raise WalletLimitExceeded(
            f"This would take wallet {wallet_id} past its holding limit of {hold_max / 100:.2f}.",
            message_fr=f"Le porte-monnaie {wallet_id} dépasserait son plafond de détention ({hold_max / 100:.2f}).",
            wallet_id=wallet_id, tier=tier, limit="hold", limit_cents=hold_max,
            balance_cents=balance_cents, amount_cents=amount,
        )
    raise WalletLimitExceeded(
        f"This would take wallet {wallet_id} past what it may receive this month ({receive_max / 100:.2f}).",
        message_fr=f"Le porte-monnaie {wallet_id} dépasserait ce qu'il peut recevoir ce mois-ci ({receive_max / 100:.2f}).",
        wallet_id=wallet_id, tier=tier, limit="receive_month", limit_cents=receive_max,
        received_month_cents=received, amount_cents=amount,
    )


async def wallet_state(conn: AsyncConnection, wallet_id: int) -> WalletState:
    wallet = await get_wallet(conn, wallet_id)
    row = (
        await conn.execute(
            text(
                f"""
                SELECT a.unit, a.balance_cents, ({_RECEIVED_MONTH.format(account=':account')}),
                       t.tier, t.hold_max_cents, t.receive_month_max_cents, t.description
                FROM accounts a, wallet_tiers t WHERE a.id = :account AND t.tier = :tier
                """
            ),
            {"account": wallet.account_id, "tier": wallet.tier},
        )
    ).one()
    return WalletState(wallet, row[0], int(row[1]), int(row[2]), Tier(*row[3:]))


# --- moving value ------------------------------------------------------------------------

async def _existing(conn: AsyncConnection, key: str) -> int | None:
    return (await conn.execute(text("SELECT id FROM transfers WHERE key = :key"), {"key": key})).scalar()


async def _credit(
    conn: AsyncConnection, *, key: str, kind: str, postings: list[Posting], metadata: dict,
) -> TransferResult:
    """Check the wallets credited by ``postings`` against their tiers, then move value."""
    if await _existing(conn, key) is None:
        await guard_credits(conn, [p for p in postings if p.amount_cents > 0])
    return await transfer(conn, key=key, kind=kind, postings=postings, metadata=metadata)


async def transfer_between_wallets(
    conn: AsyncConnection, *, key: str, from_wallet_id: int, to_wallet_id: int, amount_cents: int,
) -> TransferResult:
    """A resident gives units to another resident of the same programme."""
    _amount(amount_cents)
    payer, payee = await get_wallet(conn, from_wallet_id), await get_wallet(conn, to_wallet_id)
    if payer.id == payee.id or payer.programme_id != payee.programme_id:
        raise InvalidInput("a transfer goes to another wallet of the same currency",
                           message_fr="Un virement va vers un autre porte-monnaie de la même monnaie.")
    return await _credit(
        conn, key=f"wallet.transfer:w{payer.id}:{_client_key(key)}", kind="wallet.transfer",
        postings=[Posting(payer.account_id, -amount_cents), Posting(payee.account_id, amount_cents)],
        metadata={"from_wallet_id": payer.id, "to_wallet_id": payee.id},
    )


async def merchant_account(conn: AsyncConnection, *, merchant_id: int, programme: Programme) -> tuple[int, str]:
    """The account (in the programme's unit) and trade name of a merchant approved for it."""
    row = (
        await conn.execute(
            text(
                """
                SELECT a.id, m.trade_name FROM merchants m
                JOIN merchant_programmes mp ON mp.merchant_id = m.id AND mp.programme_id = :programme_id
                     AND mp.status = 'approved'
                JOIN accounts a ON a.kind = 'merchant' AND a.owner_type = 'merchant'
                     AND a.owner_id = m.id::text AND a.unit = :unit
                WHERE m.id = :merchant_id AND m.status = 'approved' AND m.issuer_id = :issuer_id
                ORDER BY a.id LIMIT 1
                """
            ),
            {"merchant_id": merchant_id, "unit": programme.unit, "issuer_id": programme.issuer_id,
             "programme_id": programme.id},
        )
    ).one_or_none()
    if row is None:
        raise MerchantNotPayable(merchant_id=merchant_id)
    return int(row[0]), row[1]


async def _record_taking(
    conn: AsyncConnection, *, merchant_id: int, programme_id: int, amount_cents: int, transfer_id: int,
    wallet_id: int | None, user_id: int | None = None,
) -> None:
    """The merchant's taking, read by settlement: one row per payment, with its transfer (and
    the staff member who took it, when one did)."""
    await conn.execute(
        text(
            """
            INSERT INTO merchant_takings (merchant_id, programme_id, kind, amount_cents, transfer_id,
                                          wallet_id, effective_at, user_id)
            SELECT :merchant_id, :programme_id, 'payment', :amount, t.id, :wallet_id, t.effective_at, :user_id
            FROM transfers t WHERE t.id = :transfer_id
            """
        ),
        {"merchant_id": merchant_id, "programme_id": programme_id, "amount": amount_cents,
         "transfer_id": transfer_id, "wallet_id": wallet_id, "user_id": user_id},
    )


async def _replayed_payment(conn: AsyncConnection, key: str, *, merchant_id: int, amount_cents: int) -> Payment | None:
    row = (
        await conn.execute(
            text(
                """
                SELECT k.transfer_id, k.merchant_id, k.wallet_id, k.amount_cents, k.programme_id, p.unit
                FROM transfers t JOIN merchant_takings k ON k.transfer_id = t.id
                JOIN programmes p ON p.id = k.programme_id WHERE t.key = :key
                """
            ),
            {"key": key},
        )
    ).one_or_none()
    if row is None:
        if await _existing(conn, key) is not None:
            raise IdempotencyConflict(key=key)
        return None
    if row.merchant_id != merchant_id or row.amount_cents != amount_cents:
        raise IdempotencyConflict(key=key, transfer_id=row.transfer_id)
    return Payment(row.transfer_id, False, row.merchant_id, row.wallet_id, row.amount_cents, row.programme_id, row.unit)


async def pay_merchant(
    conn: AsyncConnection, *, key: str, wallet_id: int, merchant_id: int, amount_cents: int, channel: str,
) -> Payment:
    """A resident pays a merchant: wallet → merchant account, and the merchant's taking.
    No fee: the merchant is credited in full, at once."""
    _amount(amount_cents)
    ledger_key = f"wallet.pay:{channel}:w{wallet_id}:{_client_key(key)}"
    replay = await _replayed_payment(conn, ledger_key, merchant_id=merchant_id, amount_cents=amount_cents)
    if replay is not None:
        return replay
    return await _pay(conn, ledger_key=ledger_key, wallet=await get_wallet(conn, wallet_id),
                      merchant_id=merchant_id, amount_cents=amount_cents, channel=channel)


async def _pay(conn: AsyncConnection, *, ledger_key: str, wallet: Wallet, merchant_id: int, amount_cents: int,
               channel: str, user_id: int | None = None) -> Payment:
    programme = await get_programme(conn, wallet.programme_id)
    account_id, _ = await merchant_account(conn, merchant_id=merchant_id, programme=programme)
    result = await transfer(
        conn, key=ledger_key, kind="wallet.payment",
        postings=[Posting(wallet.account_id, -amount_cents), Posting(account_id, amount_cents)],
        metadata={"wallet_id": wallet.id, "merchant_id": merchant_id, "channel": channel},
    )
    await _record_taking(conn, merchant_id=merchant_id, programme_id=programme.id, amount_cents=amount_cents,
                         transfer_id=result.transfer_id, wallet_id=wallet.id, user_id=user_id)
    return Payment(result.transfer_id, True, merchant_id, wallet.id, amount_cents, programme.id, programme.unit)


async def preview_code(conn: AsyncConnection, *, merchant_id: int, code: str, now: float | None = None) -> CodePreview:
    """Check a scanned wallet code for this shop without using it (the payment checks again)."""
    scanned = parse(code)
    wallet = await get_wallet(conn, scanned.wallet_id)
    step = matching_step(scanned, await wallet_secret(conn, wallet.id), now=now)
    used = await conn.scalar(text("SELECT 1 FROM wallet_code_uses WHERE wallet_id = :w AND counter = :c"),
                             {"w": wallet.id, "c": step})
    if used:
        raise WalletCodeUsed(wallet_id=wallet.id)
    programme = await get_programme(conn, wallet.programme_id)
    await merchant_account(conn, merchant_id=merchant_id, programme=programme)
    return CodePreview(wallet.id, programme.id, programme.name, programme.unit)


async def take_code_payment(
    conn: AsyncConnection, *, key: str, merchant_id: int, code: str, amount_cents: int, user_id: int | None = None,
    now: float | None = None,
) -> Payment:
    """A merchant scans a resident's rotating code and takes ``amount_cents``. The code is
    checked (one step of skew) and burnt in the payment's transaction; a retry with the same
    idempotency key returns the first payment instead of refusing the now-used code."""
    _amount(amount_cents)
    ledger_key = f"wallet.pay:code:m{merchant_id}:{_client_key(key)}"
    replay = await _replayed_payment(conn, ledger_key, merchant_id=merchant_id, amount_cents=amount_cents)
    if replay is not None:
        return replay
    scanned = parse(code)
    wallet = await get_wallet(conn, scanned.wallet_id)
    step = matching_step(scanned, await wallet_secret(conn, wallet.id), now=now)
    payment = await _pay(conn, ledger_key=ledger_key, wallet=wallet, merchant_id=merchant_id,
                         amount_cents=amount_cents, channel="code", user_id=user_id)
    burnt = (
        await conn.execute(
            text(
                "INSERT INTO wallet_code_uses (wallet_id, counter, transfer_id) VALUES (:w, :c, :t) "
                "ON CONFLICT DO NOTHING RETURNING counter"
            ),
            {"w": wallet.id, "c": step, "t": payment.transfer_id},
        )
    ).scalar()
    if burnt is None:
        raise WalletCodeUsed(wallet_id=wallet.id)
    return payment


async def refund_payment(
    conn: AsyncConnection, *, merchant_id: int, taking_id: int, user_id: int | None, is_owner: bool,
    window_days: int = REFUND_WINDOW_DAYS_DEFAULT, now: datetime | None = None,
) -> Payment:
    """Give a resident's payment back to the wallet, once: the ledger reverses the payment's
    transfer and the shop gets a ``refund`` taking. The owner may within ``window_days``, a
    cashier the same Paris day only (as for vouchers). Asking again returns the refund."""
    original = (
        await conn.execute(
            text(
                """
                SELECT k.id, k.kind, k.programme_id, k.amount_cents, k.wallet_id, k.transfer_id, k.effective_at,
                       p.unit, r.transfer_id AS refund_transfer_id
                FROM merchant_takings k JOIN programmes p ON p.id = k.programme_id
                LEFT JOIN merchant_takings r ON r.refund_of = k.id
                WHERE k.id = :id AND k.merchant_id = :merchant_id FOR UPDATE OF k
                """
            ),
            {"id": taking_id, "merchant_id": merchant_id},
        )
    ).one_or_none()
    if original is None:
        raise TakingNotFound(taking_id=taking_id)
    if original.kind != "payment" or original.wallet_id is None:
        raise RefundNotAllowed("Only a resident's wallet payment is refunded here.",
                               message_fr="Seul le paiement d'un porte-monnaie se rembourse ici.",
                               reason="not_a_wallet_payment")
    if original.refund_transfer_id is not None:
        return Payment(original.refund_transfer_id, False, merchant_id, original.wallet_id, original.amount_cents,
                       original.programme_id, original.unit)
    now = now or datetime.now(timezone.utc)
    if is_owner and now - original.effective_at > timedelta(days=window_days):
        raise RefundNotAllowed(f"Refunds are possible for {window_days} days after the payment.",
                               message_fr=f"Le remboursement est possible pendant {window_days} jours après le paiement.",
                               reason="window_passed", window_days=window_days)
    if not is_owner and paris_day(original.effective_at) != paris_day(now):
        raise RefundNotAllowed("A cashier can refund only on the day of the payment; ask the owner.",
                               message_fr="Un caissier ne rembourse que le jour même ; demandez au responsable.",
                               reason="cashier_same_day_only")
    wallet = await get_wallet(conn, original.wallet_id)
    await guard_credits(conn, [Posting(wallet.account_id, original.amount_cents)], receipt=False)
    try:
        result = await reverse(conn, key=f"wallet.refund:{taking_id}", transfer_id=original.transfer_id,
                               metadata={"merchant_id": merchant_id, "wallet_id": wallet.id, "refund_of": taking_id})
    except InsufficientFunds:
        raise RefundExceedsBalance(amount_cents=original.amount_cents) from None
    except AlreadyReversed:
        raise AlreadyRefunded() from None
    await conn.execute(
        text(
            """
            INSERT INTO merchant_takings (merchant_id, programme_id, kind, amount_cents, transfer_id, wallet_id,
                                          refund_of, effective_at, user_id)
            SELECT :merchant_id, :programme_id, 'refund', -CAST(:amount AS bigint), t.id, :wallet_id, :refund_of, t.effective_at,
                   :user_id
            FROM transfers t WHERE t.id = :transfer_id
            """
        ),
        {"merchant_id": merchant_id, "programme_id": original.programme_id, "amount": original.amount_cents,
         "transfer_id": result.transfer_id, "wallet_id": wallet.id, "refund_of": taking_id, "user_id": user_id},
    )
    return Payment(result.transfer_id, True, merchant_id, wallet.id, original.amount_cents, original.programme_id,
                   original.unit)


async def pay_between_merchants(
    conn: AsyncConnection, *, key: str, from_merchant_id: int, to_merchant_id: int, amount_cents: int,
    programme_id: int | None = None,
) -> Payment:
    """A merchant pays a supplier in the local currency; the supplier's taking is recorded."""
    _amount(amount_cents)
    if from_merchant_id == to_merchant_id:
        raise InvalidInput("a merchant pays another merchant")
    programme = await local_programme(conn, programme_id)
    ledger_key = f"merchant.pay:m{from_merchant_id}:{_client_key(key)}"
    replay = await _replayed_payment(conn, ledger_key, merchant_id=to_merchant_id, amount_cents=amount_cents)
    if replay is not None:
        return replay
    payer_account, _ = await merchant_account(conn, merchant_id=from_merchant_id, programme=programme)
    payee_account, _ = await merchant_account(conn, merchant_id=to_merchant_id, programme=programme)
    result = await transfer(
        conn, key=ledger_key, kind="merchant.payment",
        postings=[Posting(payer_account, -amount_cents), Posting(payee_account, amount_cents)],
        metadata={"from_merchant_id": from_merchant_id, "merchant_id": to_merchant_id},
    )
    await _record_taking(conn, merchant_id=to_merchant_id, programme_id=programme.id, amount_cents=amount_cents,
                         transfer_id=result.transfer_id, wallet_id=None)
    return Payment(result.transfer_id, True, to_merchant_id, None, amount_cents, programme.id, programme.unit)


async def counter_account(conn: AsyncConnection, merchant_id: int) -> int:
    """The counter's euro account (kind counter, no floor): what it owes the reserve."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('counter_account'), :m)"), {"m": merchant_id})
    found = (
        await conn.execute(
            text("SELECT id FROM accounts WHERE kind = 'counter' AND owner_type = 'merchant' "
                 "AND owner_id = :m AND unit = 'EUR' ORDER BY id LIMIT 1"),
            {"m": str(merchant_id)},
        )
    ).scalar()
    if found is not None:
        return found
    return (
        await conn.execute(
            text("INSERT INTO accounts (kind, unit, owner_type, owner_id, floor_cents) "
                 "VALUES ('counter', 'EUR', 'merchant', :m, NULL) RETURNING id"),
            {"m": str(merchant_id)},
        )
    ).scalar_one()


async def counter_credit(
    conn: AsyncConnection, *, key: str, merchant_id: int, wallet_id: int, amount_cents: int, method: str,
) -> TransferResult:
    """An exchange counter takes euros (cash or card) and credits a wallet: the counter owes
    the reserve those euros (settlement nets them), and as many units enter circulation."""
    _amount(amount_cents)
    if method not in ("cash", "card"):
        raise InvalidInput("the method is cash or card")
    wallet = await get_wallet(conn, wallet_id)
    programme = await get_programme(conn, wallet.programme_id)
    # The counter owes this programme's reserve: it must be one of the programme's own shops.
    is_counter = (
        await conn.execute(
            text(
                """
                SELECT m.is_counter FROM merchants m
                JOIN merchant_programmes mp ON mp.merchant_id = m.id AND mp.programme_id = :p AND mp.status = 'approved'
                WHERE m.id = :m AND m.status = 'approved' AND m.issuer_id = :issuer
                """
            ),
            {"m": merchant_id, "p": programme.id, "issuer": programme.issuer_id},
        )
    ).scalar()
    if not is_counter:
        raise NotACounter(merchant_id=merchant_id)
    return await _credit(
        conn, key=f"counter.credit:m{merchant_id}:{_client_key(key)}", kind="counter.credit",
        postings=[
            Posting(await counter_account(conn, merchant_id), -amount_cents),
            Posting(programme.reserve_account_id, amount_cents),
            Posting(programme.float_account_id, -amount_cents),
            Posting(wallet.account_id, amount_cents),
        ],
        metadata={"merchant_id": merchant_id, "wallet_id": wallet.id, "method": method},
    )


# --- town campaigns and payments from CSV ------------------------------------------------

def parse_amount(raw: str) -> int:
    """Euros as written by a person ("50", "12.5", "12,50") to cents; refuses anything else."""
    value = (raw or "").strip().replace(",", ".")
    if not _AMOUNT.match(value):
        raise ValueError("the amount is in euros, e.g. 50 or 12.50")
    try:
        return int(Decimal(value) * 100)
    except InvalidOperation:
        raise ValueError("the amount is in euros, e.g. 50 or 12.50") from None


def _csv_rows(data: str, required: set[str]) -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(data.lstrip("\ufeff")))
    header = {(name or "").strip().lower() for name in reader.fieldnames or []}
    if not required <= header:
        raise CsvInvalid(errors=[{"line": 1, "error": f"the header names {', '.join(sorted(required))}"}])
    rows = [(reader.line_num, {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}) for row in reader]
    if not 1 <= len(rows) <= CAMPAIGN_ROWS_MAX:
        raise CsvInvalid(errors=[{"line": 1, "error": f"the file has 1 to {CAMPAIGN_ROWS_MAX} rows"}])
    return rows


def _refuse_if(errors: list[dict]) -> None:
    if errors:
        raise CsvInvalid(errors=errors[:CSV_ERRORS_SHOWN_MAX], error_count=len(errors))


def parse_campaign_csv(data: str) -> list[CampaignRow]:
    """Columns ``name, email, phone, amount`` (euros); every error is reported with its line."""
    parsed: list[CampaignRow] = []
    errors: list[dict] = []
    seen: dict[str, int] = {}
    for line, row in _csv_rows(data, {"name", "email", "phone", "amount"}):
        try:
            email, phone = _contact(row.get("email"), row.get("phone"))
            name = _name(row.get("name", ""))
            amount = parse_amount(row.get("amount", ""))
        except (DomainError, ValueError) as error:
            errors.append({"line": line, "error": str(error)})
            continue
        for contact in filter(None, (email, phone)):
            if contact in seen:
                errors.append({"line": line, "error": f"{contact} is also on line {seen[contact]}"})
            seen.setdefault(contact, line)
        parsed.append(CampaignRow(line, name, email, phone, amount))
    _refuse_if(errors)
    return parsed


def parse_payout_csv(data: str) -> list[PayoutRow]:
    """Columns ``recipient_type`` (wallet or merchant), ``recipient_id``, ``amount`` (euros), ``label``."""
    parsed: list[PayoutRow] = []
    errors: list[dict] = []
    for line, row in _csv_rows(data, {"recipient_type", "recipient_id", "amount"}):
        try:
            kind = row.get("recipient_type", "")
            if kind not in ("wallet", "merchant"):
                raise ValueError("recipient_type is wallet or merchant")
            if not re.match(r"^[1-9][0-9]{0,17}$", row.get("recipient_id", "")):
                raise ValueError("recipient_id is a wallet or merchant id")
            amount = parse_amount(row.get("amount", ""))
            if amount == 0:
                raise ValueError("a payment moves more than zero")
        except ValueError as error:
            errors.append({"line": line, "error": str(error)})
            continue
        parsed.append(PayoutRow(line, kind, int(row["recipient_id"]), amount, row.get("label", "")[:140]))
    _refuse_if(errors)
    return parsed


def _issue_postings(programme: Programme, credits: list[Posting]) -> list[Posting]:
    """Euros from the funder's bank into the reserve; as many units out to the recipients."""
    total = sum(c.amount_cents for c in credits)
    return [Posting(programme.bank_account_id, -total), Posting(programme.reserve_account_id, total),
            Posting(programme.float_account_id, -total), *credits]


async def open_campaign(
    conn: AsyncConnection, *, key: str, programme_id: int | None, name: str, rows: Sequence[CampaignRow],
    tier: str = "unverified",
) -> BatchResult:
    """A town opens many wallets at once, each funded with its amount: one set-based insert,
    one ledger transfer for the whole campaign. A key seen before returns the first result."""
    programme = await local_programme(conn, programme_id)
    key = _client_key(key)
    previous = (
        await conn.execute(
            text("SELECT c.id, t.id AS transfer_id, c.wallets, c.total_cents FROM wallet_campaigns c "
                 "LEFT JOIN transfers t ON t.key = 'wallet.campaign:' || c.key WHERE c.key = :key"),
            {"key": key},
        )
    ).one_or_none()
    if previous is not None:
        return BatchResult(key, previous.transfer_id, False, previous.wallets, previous.total_cents, previous.id)
    if not rows:
        raise InvalidInput("a campaign opens at least one wallet")
    limits = {t.tier: t for t in await tiers(conn)}
    if tier not in limits:
        raise InvalidInput("unknown tier", tier=tier)
    cap = min(limits[tier].hold_max_cents, limits[tier].receive_month_max_cents)
    _refuse_if([{"line": r.line, "error": f"the amount is above the {tier} limit of {cap / 100:.2f}"}
                for r in rows if r.amount_cents > cap])
    taken = (
        await conn.execute(
            text(
                """
                SELECT coalesce(w.email, w.phone) FROM wallets w
                WHERE w.programme_id = :programme_id
                  AND (lower(w.email) = ANY(CAST(:emails AS text[])) OR w.phone = ANY(CAST(:phones AS text[])))
                LIMIT :shown
                """
            ),
            {"programme_id": programme.id, "emails": [r.email for r in rows if r.email],
             "phones": [r.phone for r in rows if r.phone], "shown": CSV_ERRORS_SHOWN_MAX},
        )
    ).scalars().all()
    if taken:
        raise WalletContactTaken(contacts=list(taken))
    total = sum(r.amount_cents for r in rows)
    campaign_id = (
        await conn.execute(
            text("INSERT INTO wallet_campaigns (programme_id, name, key, wallets, total_cents) "
                 "VALUES (:p, :name, :key, :n, :total) RETURNING id"),
            {"p": programme.id, "name": _name(name), "key": key, "n": len(rows), "total": total},
        )
    ).scalar_one()
    made = await _insert_wallets(conn, programme, [(r.display_name, r.email, r.phone) for r in rows],
                                 tier=tier, campaign_id=campaign_id)
    # Wallet ids were drawn in row order, so the sorted ids line up with the rows.
    credits = [Posting(account_id, r.amount_cents) for (_, account_id), r in zip(made, rows) if r.amount_cents > 0]
    transfer_id = None
    if credits:
        result = await transfer(conn, key=f"wallet.campaign:{key}", kind="wallet.campaign",
                                postings=_issue_postings(programme, credits),
                                metadata={"campaign_id": campaign_id, "wallets": len(rows)})
        transfer_id = result.transfer_id
    await audit_append(conn, event_type="wallet.campaign_opened", payload={
        "campaign_id": campaign_id, "programme_id": programme.id, "wallets": len(rows), "total_cents": total,
        "transfer_id": transfer_id})
    return BatchResult(key, transfer_id, True, len(rows), total, campaign_id)


async def town_payments(
    conn: AsyncConnection, *, key: str, programme_id: int | None, rows: Sequence[PayoutRow],
) -> BatchResult:
    """The town pays many wallets or merchants (subsidies, allowances, fees) in one transfer:
    its euros enter the reserve, the units go to the recipients; merchants' takings recorded."""
    programme = await local_programme(conn, programme_id)
    ledger_key = f"town.payments:{_client_key(key)}"
    existing = await _existing(conn, ledger_key)
    if existing is not None:
        total = (await conn.execute(text("SELECT -sum(p.amount_cents) FROM postings p WHERE p.transfer_id = :t "
                                         "AND p.account_id = :f"), {"t": existing, "f": programme.float_account_id})).scalar()
        return BatchResult(key, existing, False, len(rows), int(total or 0))
    wallet_rows = (
        await conn.execute(
            text("SELECT id, account_id FROM wallets WHERE programme_id = :p AND id = ANY(CAST(:ids AS bigint[]))"),
            {"p": programme.id, "ids": [r.recipient_id for r in rows if r.recipient_type == "wallet"]},
        )
    ).all()
    wallet_accounts = {int(w): int(a) for w, a in wallet_rows}
    merchant_accounts: dict[int, int] = {}
    errors = []
    for r in rows:
        if r.recipient_type == "wallet" and r.recipient_id not in wallet_accounts:
            errors.append({"line": r.line, "error": f"no wallet {r.recipient_id} in this currency"})
        elif r.recipient_type == "merchant" and r.recipient_id not in merchant_accounts:
            try:
                merchant_accounts[r.recipient_id], _ = await merchant_account(
                    conn, merchant_id=r.recipient_id, programme=programme)
            except MerchantNotPayable:
                errors.append({"line": r.line, "error": f"merchant {r.recipient_id} cannot be paid"})
    _refuse_if(errors)
    by_account: dict[int, int] = {}
    for r in rows:
        account = (wallet_accounts if r.recipient_type == "wallet" else merchant_accounts)[r.recipient_id]
        by_account[account] = by_account.get(account, 0) + r.amount_cents
    credits = [Posting(a, c) for a, c in sorted(by_account.items())]
    await guard_credits(conn, credits)
    result = await transfer(conn, key=ledger_key, kind="town.payments", postings=_issue_postings(programme, credits),
                            metadata={"rows": len(rows)})
    for merchant_id, account in merchant_accounts.items():
        await _record_taking(conn, merchant_id=merchant_id, programme_id=programme.id,
                             amount_cents=by_account[account], transfer_id=result.transfer_id, wallet_id=None)
    return BatchResult(key, result.transfer_id, True, len(rows), sum(by_account.values()))


# --- reading -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HistoryEntry:
    transfer_id: int
    kind: str
    amount_cents: int
    at: datetime
    merchant_id: int | None
    merchant_name: str | None
    other_wallet_id: int | None


async def history(conn: AsyncConnection, wallet_id: int, *, limit: int = 50) -> list[HistoryEntry]:
    """The wallet's movements, newest first, with the merchant or wallet on the other side."""
    wallet = await get_wallet(conn, wallet_id)
    rows = await conn.execute(
        text(
            """
            SELECT t.id, t.kind, p.amount_cents, t.effective_at, m.id, m.trade_name,
                   CASE WHEN p.amount_cents < 0 THEN (t.metadata->>'to_wallet_id')::bigint
                        ELSE (t.metadata->>'from_wallet_id')::bigint END
            FROM postings p JOIN transfers t ON t.id = p.transfer_id
            LEFT JOIN merchants m ON m.id = (t.metadata->>'merchant_id')::bigint
            WHERE p.account_id = :account
            ORDER BY t.id DESC LIMIT :limit
            """
        ),
        {"account": wallet.account_id, "limit": min(max(limit, 1), 500)},
    )
    return [HistoryEntry(*row) for row in rows]


# --- gift vouchers kept in the wallet ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GiftVoucher:
    voucher_id: int
    code: str
    programme_name: str
    unit: str
    balance_cents: int  # what can still be spent: 0 once expired, revoked or replaced
    expires_at: datetime
    status: str
    token: str  # what the voucher's QR holds, for a shop to scan


async def add_gift_voucher(conn: AsyncConnection, *, wallet_id: int, code: str) -> GiftVoucher:
    """Keep a voucher received as a gift in the wallet page; adding it again changes nothing."""
    await get_wallet(conn, wallet_id)
    voucher = await voucher_for_code(conn, code)
    holder = (
        await conn.execute(
            text(
                "INSERT INTO wallet_vouchers (voucher_id, wallet_id) VALUES (:v, :w) "
                "ON CONFLICT (voucher_id) DO UPDATE SET voucher_id = excluded.voucher_id RETURNING wallet_id"
            ),
            {"v": voucher.id, "w": wallet_id},
        )
    ).scalar_one()
    if holder != wallet_id:
        raise VoucherInAnotherWallet()
    return next(g for g in await gift_vouchers(conn, wallet_id) if g.voucher_id == voucher.id)


async def gift_vouchers(conn: AsyncConnection, wallet_id: int) -> list[GiftVoucher]:
    rows = await conn.execute(
        text(
            """
            SELECT v.id, v.code, p.name, a.unit,
                   CASE WHEN v.status = 'active' AND v.expires_at > now()
                        THEN a.balance_cents - a.pending_debits_cents ELSE 0 END,
                   v.expires_at, v.status, v.token
            FROM wallet_vouchers wv JOIN vouchers v ON v.id = wv.voucher_id
            JOIN programmes p ON p.id = v.programme_id JOIN accounts a ON a.id = v.account_id
            WHERE wv.wallet_id = :w ORDER BY v.expires_at, v.id
            """
        ),
        {"w": wallet_id},
    )
    return [GiftVoucher(row[0], format_code(row[1]), *row[2:]) for row in rows]

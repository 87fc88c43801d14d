"""Vouchers: issuing them (one ledger transfer per batch), finding them by token or code,
revoking and reissuing, extending, expiring into breakage, and the signing keys.

Each voucher is a ledger account of kind ``voucher`` (floor 0) in its programme's unit; its
balance is the ledger's, never a column here. The ``vouchers`` row holds what the ledger does
not: the public code, the signed token, who funded it, when it expires, whether it was
revoked. Redemption is the merchants capability's: it calls :func:`voucher_for_token` or
:func:`voucher_for_code`, then :func:`check_usable` and ``programmes.acceptance``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append
from ledger.errors import DomainError, InvalidInput
from ledger.programmes import ProgrammeRules, breakage_account, get_rules
from ledger.tokens import (
    VoucherKey,
    new_code,
    parse_code,
    sign_token,
    verify_token,
)
from ledger.transfers import Posting, TransferResult, transfer

VOUCHERS_PER_BATCH_MAX = 20_000
PAGE_SECRET_BYTES = 18
EXPIRY_BATCH_MAX = 5_000


class VoucherNotFound(DomainError):
    code = "voucher_not_found"
    message = "No voucher has this code."
    message_fr = "Aucun titre ne porte ce code."


class Revoked(DomainError):
    code = "revoked"
    message = "This voucher was revoked (reported lost or replaced)."
    message_fr = "Ce titre a été révoqué (déclaré perdu ou remplacé)."


class Expired(DomainError):
    code = "expired"
    message = "This voucher has expired."
    message_fr = "Ce titre a expiré."


class FaceValueOutOfRange(DomainError):
    code = "face_value_out_of_range"
    message = "The amount is outside the programme's face-value limits."
    message_fr = "Le montant est hors des limites de valeur faciale du programme."


class NotExtendable(DomainError):
    code = "not_extendable"
    message = "Only an active voucher can be extended, and only to a later date."
    message_fr = "Seul un titre actif peut être prolongé, et seulement à une date ultérieure."


@dataclass(frozen=True, slots=True)
class VoucherLine:
    """One voucher to issue."""

    amount_cents: int
    beneficiary_name: str | None = None
    beneficiary_email: str | None = None
    order_line_id: int | None = None


@dataclass(frozen=True, slots=True)
class Voucher:
    id: int
    programme_id: int
    account_id: int
    code: str
    token: str
    key_id: str
    page_secret: str
    face_value_cents: int
    beneficiary_name: str | None
    beneficiary_email: str | None
    employer_id: int | None
    order_id: int | None
    issue_transfer_id: int
    issued_at: datetime
    expires_at: datetime
    status: str
    revoked_at: datetime | None
    replaced_by: int | None
    reissue_of: int | None
    expired_at: datetime | None


_COLUMNS = (
    "id, programme_id, account_id, code, token, key_id, page_secret, face_value_cents, beneficiary_name, "
    "beneficiary_email, employer_id, order_id, issue_transfer_id, issued_at, expires_at, status, revoked_at, "
    "replaced_by, reissue_of, expired_at"
)


# --- signing keys ---------------------------------------------------------------------------

async def active_key(conn: AsyncConnection) -> VoucherKey:
    """The key that signs new tokens; the first call on a fresh database creates it."""
    raw = await conn.scalar(text("SELECT private_key FROM voucher_signing_keys WHERE retired_at IS NULL"))
    if raw is None:
        key = VoucherKey.generate()
        await conn.execute(
            text(
                "INSERT INTO voucher_signing_keys (key_id, public_key, private_key) VALUES (:key_id, :public, :private) "
                "ON CONFLICT DO NOTHING"
            ),
            {"key_id": key.key_id, "public": key.public_bytes, "private": key.private_bytes},
        )
        raw = await conn.scalar(text("SELECT private_key FROM voucher_signing_keys WHERE retired_at IS NULL"))
    return VoucherKey.from_private_bytes(bytes(raw))


async def rotate_key(conn: AsyncConnection, *, actor: str) -> VoucherKey:
    """Retire the signing key (its tokens stay verifiable) and start a new one."""
    old = await active_key(conn)
    await conn.execute(text("UPDATE voucher_signing_keys SET retired_at = now() WHERE key_id = :id"), {"id": old.key_id})
    new = await active_key(conn)
    await append(conn, event_type="voucher_key.rotated", payload={"retired": old.key_id, "active": new.key_id}, actor=actor)
    return new


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: str
    public_key: bytes
    created_at: datetime
    retired_at: datetime | None


async def key_set(conn: AsyncConnection) -> list[PublicKey]:
    rows = (await conn.execute(text(
        "SELECT key_id, public_key, created_at, retired_at FROM voucher_signing_keys ORDER BY created_at, key_id"
    ))).all()
    return [PublicKey(r.key_id, bytes(r.public_key), r.created_at, r.retired_at) for r in rows]


async def public_keys(conn: AsyncConnection) -> dict[str, bytes]:
    return {key.key_id: key.public_key for key in await key_set(conn)}


# --- issuing --------------------------------------------------------------------------------

def check_face_values(programme: ProgrammeRules, amounts: Sequence[int]) -> None:
    for index, amount in enumerate(amounts):
        if type(amount) is not int or not programme.face_value_min_cents <= amount <= programme.face_value_max_cents:
            raise FaceValueOutOfRange(
                index=index, amount_cents=amount if type(amount) is int else str(amount),
                min_cents=programme.face_value_min_cents, max_cents=programme.face_value_max_cents,
            )


async def _fresh_codes(conn: AsyncConnection, count: int) -> list[str]:
    """``count`` new codes none of which is already taken (54 random bits make a clash rare)."""
    codes = {new_code() for _ in range(count)}
    while True:
        taken = set((await conn.execute(
            text("SELECT code FROM vouchers WHERE code = ANY(CAST(:codes AS text[]))"), {"codes": list(codes)}
        )).scalars())
        codes -= taken
        if len(codes) == count:
            return list(codes)
        codes |= {new_code() for _ in range(count - len(codes))}


async def issue_vouchers(
    conn: AsyncConnection,
    *,
    programme: ProgrammeRules,
    key: str,
    lines: Sequence[VoucherLine],
    source: Sequence[Posting],
    kind: str,
    actor: str,
    employer_id: int | None = None,
    order_id: int | None = None,
    issued_at: datetime | None = None,
    reissue_of: int | None = None,
    expires_at: datetime | None = None,
    check_limits: bool = True,
    metadata: dict[str, Any] | None = None,
) -> list[Voucher]:
    """Open one voucher account per line and fund them all in ONE ledger transfer whose other
    postings are ``source`` (they must sum to minus the lines' total in the programme's unit).

    Set-based: accounts, ids and voucher rows are each written in one statement, so 10,000
    lines cost a handful of round trips. The caller's transaction holds it all together.
    """
    if not 1 <= len(lines) <= VOUCHERS_PER_BATCH_MAX:
        raise InvalidInput(f"a batch issues 1 to {VOUCHERS_PER_BATCH_MAX} vouchers",
                           message_fr=f"un lot émet de 1 à {VOUCHERS_PER_BATCH_MAX} titres")
    if check_limits:
        check_face_values(programme, [line.amount_cents for line in lines])
    count = len(lines)
    issued_at = issued_at or datetime.now(timezone.utc)
    expires_at = expires_at or programme.expiry_for(issued_at)
    already = await conn.scalar(text("SELECT id FROM transfers WHERE key = :key"), {"key": key})
    if already is not None:
        # This batch was issued before under the same key: hand back those vouchers.
        return await _vouchers_of_transfer(conn, already)
    voucher_ids = list((await conn.execute(
        text("SELECT nextval(pg_get_serial_sequence('vouchers', 'id')) FROM generate_series(1, :n)"), {"n": count}
    )).scalars())
    opened = dict((await conn.execute(
        text(
            "INSERT INTO accounts (kind, unit, owner_type, owner_id, floor_cents) "
            "SELECT 'voucher', :unit, 'voucher', v::text, 0 FROM unnest(CAST(:ids AS bigint[])) v RETURNING owner_id, id"
        ),
        {"unit": programme.unit, "ids": voucher_ids},
    )).all())
    account_ids = [opened[str(v)] for v in voucher_ids]
    result: TransferResult = await transfer(
        conn, key=key, kind=kind,
        postings=[*source, *(Posting(a, line.amount_cents) for a, line in zip(account_ids, lines))],
        metadata={**(metadata or {}), "programme_id": programme.id, "employer_id": employer_id,
                  "order_id": order_id, "vouchers": count},
    )
    signing_key = await active_key(conn)
    codes = await _fresh_codes(conn, count)
    tokens = [sign_token(signing_key, voucher_id=v, programme_id=programme.id, expires_at=expires_at) for v in voucher_ids]
    secrets_ = [secrets.token_urlsafe(PAGE_SECRET_BYTES) for _ in range(count)]
    await conn.execute(
        text(
            """
            INSERT INTO vouchers (id, programme_id, account_id, code, token, key_id, page_secret, face_value_cents,
                                  beneficiary_name, beneficiary_email, employer_id, order_id, order_line_id,
                                  issue_transfer_id, issued_at, expires_at, reissue_of)
            OVERRIDING SYSTEM VALUE
            SELECT v.id, :programme_id, v.account_id, v.code, v.token, :key_id, v.secret, v.amount,
                   v.name, v.email, :employer_id, :order_id, v.line_id, :transfer_id, :issued_at, :expires_at, :reissue_of
            FROM unnest(CAST(:ids AS bigint[]), CAST(:accounts AS bigint[]), CAST(:codes AS text[]),
                        CAST(:tokens AS text[]), CAST(:secrets AS text[]), CAST(:amounts AS bigint[]),
                        CAST(:names AS text[]), CAST(:emails AS text[]), CAST(:line_ids AS bigint[]))
                 AS v(id, account_id, code, token, secret, amount, name, email, line_id)
            """
        ),
        {
            "programme_id": programme.id, "key_id": signing_key.key_id, "employer_id": employer_id,
            "order_id": order_id, "transfer_id": result.transfer_id, "issued_at": issued_at,
            "expires_at": expires_at, "reissue_of": reissue_of, "ids": voucher_ids, "accounts": account_ids,
            "codes": codes, "tokens": tokens, "secrets": secrets_,
            "amounts": [line.amount_cents for line in lines],
            "names": [line.beneficiary_name for line in lines],
            "emails": [line.beneficiary_email for line in lines],
            "line_ids": [line.order_line_id for line in lines],
        },
    )
    await append(
        conn, event_type="vouchers.issued",
        payload={"programme_id": programme.id, "transfer_id": result.transfer_id, "employer_id": employer_id,
                 "order_id": order_id, "reissue_of": reissue_of, "key_id": signing_key.key_id,
                 "expires_at": expires_at.isoformat(), "voucher_ids": voucher_ids, "account_ids": account_ids,
                 "amounts_cents": [line.amount_cents for line in lines]},
        actor=actor,
    )
    return await _vouchers_of_transfer(conn, result.transfer_id)


async def sell_vouchers(
    conn: AsyncConnection, *, programme: ProgrammeRules, key: str, lines: Sequence[VoucherLine], actor: str,
    employer_id: int | None = None, metadata: dict[str, Any] | None = None,
) -> list[Voucher]:
    """A direct sale paid on the spot: euros in from the bank into the reserve and as much
    value out of the float into the new vouchers, all in one transfer."""
    total = sum(line.amount_cents for line in lines)
    return await issue_vouchers(
        conn, programme=programme, key=key, lines=lines, kind="voucher.sale", actor=actor, employer_id=employer_id,
        metadata=metadata,
        source=[Posting(programme.bank_account_id, -total), Posting(programme.reserve_account_id, total),
                Posting(programme.float_account_id, -total)],
    )


# --- finding ------------------------------------------------------------------------------

def _voucher(row: Any) -> Voucher:
    return Voucher(*row)


async def _vouchers_of_transfer(conn: AsyncConnection, transfer_id: int) -> list[Voucher]:
    rows = (await conn.execute(
        text(f"SELECT {_COLUMNS} FROM vouchers WHERE issue_transfer_id = :id ORDER BY id"), {"id": transfer_id}
    )).all()
    return [_voucher(row) for row in rows]


async def get_voucher(conn: AsyncConnection, voucher_id: int, *, for_update: bool = False) -> Voucher:
    row = (await conn.execute(
        text(f"SELECT {_COLUMNS} FROM vouchers WHERE id = :id" + (" FOR UPDATE" if for_update else "")),
        {"id": voucher_id},
    )).one_or_none()
    if row is None:
        raise VoucherNotFound(voucher_id=voucher_id)
    return _voucher(row)


async def vouchers_of_order(conn: AsyncConnection, order_id: int, *, current: bool = False) -> list[Voucher]:
    """Every voucher an order produced, reissues included; with ``current``, only those a
    holder can still use or look at (a revoked one gives way to its replacement)."""
    rows = (await conn.execute(
        text(f"SELECT {_COLUMNS} FROM vouchers WHERE order_id = :id"
             + (" AND status <> 'revoked'" if current else "") + " ORDER BY id"),
        {"id": order_id},
    )).all()
    return [_voucher(row) for row in rows]


async def voucher_for_token(conn: AsyncConnection, token: str, *, for_update: bool = False) -> Voucher:
    """The voucher a token names, once its signature holds (``token_malformed``,
    ``unknown_signing_key``, ``bad_signature``). Usability is :func:`check_usable`'s."""
    claims = verify_token(token, await public_keys(conn))
    voucher = await get_voucher(conn, claims.voucher_id, for_update=for_update)
    if voucher.programme_id != claims.programme_id:
        raise VoucherNotFound(voucher_id=claims.voucher_id)
    return voucher


async def voucher_for_code(conn: AsyncConnection, typed: str, *, for_update: bool = False) -> Voucher:
    """The voucher of a typed public code (``code_malformed``, ``code_check_failed``,
    ``voucher_not_found``)."""
    code = parse_code(typed)
    row = (await conn.execute(
        text(f"SELECT {_COLUMNS} FROM vouchers WHERE code = :code" + (" FOR UPDATE" if for_update else "")),
        {"code": code},
    )).one_or_none()
    if row is None:
        raise VoucherNotFound()
    return _voucher(row)


async def voucher_for_page(conn: AsyncConnection, page_secret: str) -> Voucher:
    row = (await conn.execute(text(f"SELECT {_COLUMNS} FROM vouchers WHERE page_secret = :s"), {"s": page_secret})).one_or_none()
    if row is None:
        raise VoucherNotFound()
    return _voucher(row)


def check_usable(voucher: Voucher, at: datetime | None = None) -> None:
    """Refuse a revoked voucher (``revoked``, naming its replacement) or an expired one
    (``expired``). The balance is the ledger's to enforce when value moves."""
    at = at or datetime.now(timezone.utc)
    if voucher.status == "revoked":
        raise Revoked(voucher_id=voucher.id, replaced_by=voucher.replaced_by)
    if voucher.status == "expired" or voucher.expires_at <= at:
        raise Expired(voucher_id=voucher.id, expired_at=voucher.expires_at.isoformat())


async def balances(conn: AsyncConnection, vouchers: Sequence[Voucher]) -> dict[int, int]:
    """Each voucher account's balance, by account id, in one query."""
    rows = (await conn.execute(
        text("SELECT id, balance_cents FROM accounts WHERE id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": [v.account_id for v in vouchers]},
    )).all()
    return dict(rows)


@dataclass(frozen=True, slots=True)
class BalanceEnquiry:
    """What anyone holding a code may learn: what is left, in what unit, until when, and whether
    it can still be spent. Nothing about who holds it or where it was spent."""

    balance_cents: int
    unit: str
    expires_at: datetime
    status: str


async def balance_enquiry(conn: AsyncConnection, typed_code: str) -> BalanceEnquiry:
    voucher = await voucher_for_code(conn, typed_code)
    row = (await conn.execute(
        text("SELECT balance_cents - pending_debits_cents AS available_cents, unit FROM accounts WHERE id = :id"),
        {"id": voucher.account_id},
    )).one()
    usable = voucher.status == "active" and voucher.expires_at > datetime.now(timezone.utc)
    return BalanceEnquiry(int(row.available_cents) if usable else 0, row.unit, voucher.expires_at,
                          voucher.status if voucher.status != "active" or usable else "expired")


# --- lifecycle ------------------------------------------------------------------------------

async def revoke_and_reissue(
    conn: AsyncConnection, voucher_id: int, *, reason: str, actor: str
) -> tuple[Voucher, Voucher | None]:
    """Revoke a (lost) voucher and move what is left on it to a new voucher with a new code and
    token, same programme, holder and expiry. Returns (old, new); new is None if nothing was left."""
    if not 1 <= len(reason.strip()) <= 500:
        raise InvalidInput("give a reason (1 to 500 characters)", message_fr="indiquez un motif (1 à 500 caractères)")
    old = await get_voucher(conn, voucher_id, for_update=True)
    check_usable(old)
    left = int(await conn.scalar(
        text("SELECT balance_cents - pending_debits_cents FROM accounts WHERE id = :id FOR UPDATE"),
        {"id": old.account_id},
    ))
    new: Voucher | None = None
    if left > 0:
        # Same expiry (a reissue replaces the paper, it does not extend the value), and no
        # face-value limits: a remainder below the minimum is still the holder's.
        (new,) = await issue_vouchers(
            conn, programme=await get_rules(conn, old.programme_id), key=f"voucher-reissue-{old.id}",
            lines=[VoucherLine(left, old.beneficiary_name, old.beneficiary_email)],
            source=[Posting(old.account_id, -left)], kind="voucher.reissue", actor=actor,
            employer_id=old.employer_id, order_id=old.order_id, reissue_of=old.id, expires_at=old.expires_at,
            check_limits=False, metadata={"reason": reason.strip()},
        )
    await conn.execute(
        text("UPDATE vouchers SET status = 'revoked', revoked_at = now(), revoke_reason = :reason, replaced_by = :new "
             "WHERE id = :id"),
        {"id": old.id, "reason": reason.strip(), "new": new.id if new else None},
    )
    await append(conn, event_type="voucher.revoked",
                 payload={"voucher_id": old.id, "reason": reason.strip(), "moved_cents": left,
                          "replaced_by": new.id if new else None}, actor=actor)
    return await get_voucher(conn, old.id), (await get_voucher(conn, new.id) if new else None)


async def extend_validity(conn: AsyncConnection, voucher_id: int, *, expires_at: datetime, actor: str) -> Voucher:
    """Push an active voucher's expiry later; its token is re-signed with the new date."""
    voucher = await get_voucher(conn, voucher_id, for_update=True)
    if expires_at.tzinfo is None:
        raise InvalidInput("the new expiry needs a time zone", message_fr="la nouvelle échéance doit porter un fuseau horaire")
    if voucher.status != "active" or expires_at <= voucher.expires_at:
        raise NotExtendable(voucher_id=voucher_id, voucher_status=voucher.status, expires_at=voucher.expires_at.isoformat())
    token = sign_token(await active_key(conn), voucher_id=voucher.id, programme_id=voucher.programme_id,
                       expires_at=expires_at)
    await conn.execute(
        text("UPDATE vouchers SET expires_at = :at, token = :token, key_id = :key_id WHERE id = :id"),
        {"at": expires_at, "token": token, "key_id": (await active_key(conn)).key_id, "id": voucher_id},
    )
    await append(conn, event_type="voucher.validity_extended",
                 payload={"voucher_id": voucher_id, "before": voucher.expires_at.isoformat(),
                          "after": expires_at.astimezone(timezone.utc).isoformat()}, actor=actor)
    return await get_voucher(conn, voucher_id)


@dataclass(frozen=True, slots=True)
class ExpiryRun:
    vouchers: int
    moved_cents: int
    transfer_ids: tuple[int, ...]


async def expire_due(conn: AsyncConnection, *, actor: str = "system", now: datetime | None = None,
                     limit: int = EXPIRY_BATCH_MAX) -> ExpiryRun:
    """Mark vouchers past their expiry as expired and move what is left on them to their
    programme's breakage account: one transfer and one audit event per programme per run."""
    now = now or datetime.now(timezone.utc)
    rows = (await conn.execute(
        text(
            """
            SELECT v.id, v.programme_id, v.account_id, a.balance_cents - a.pending_debits_cents AS left_cents
            FROM vouchers v JOIN accounts a ON a.id = v.account_id
            WHERE v.status = 'active' AND v.expires_at <= :now
            ORDER BY v.id LIMIT :limit FOR UPDATE OF v SKIP LOCKED
            """
        ),
        {"now": now, "limit": limit},
    )).all()
    by_programme: dict[int, list[Any]] = {}
    for row in rows:
        by_programme.setdefault(row.programme_id, []).append(row)
    transfer_ids = []
    moved_total = 0
    for programme_id, group in by_programme.items():
        funded = [row for row in group if row.left_cents > 0]
        moved = sum(row.left_cents for row in funded)
        transfer_id = None
        if funded:
            result = await transfer(
                conn, key=f"voucher-expire-{programme_id}-{group[0].id}-{group[-1].id}-{len(group)}", kind="voucher.expire",
                postings=[*(Posting(row.account_id, -row.left_cents) for row in funded),
                          Posting(await breakage_account(conn, programme_id), moved)],
                metadata={"programme_id": programme_id, "vouchers": len(funded)},
            )
            transfer_id = result.transfer_id
            transfer_ids.append(transfer_id)
        await conn.execute(
            text("UPDATE vouchers SET status = 'expired', expired_at = :now WHERE id = ANY(CAST(:ids AS bigint[]))"),
            {"now": now, "ids": [row.id for row in group]},
        )
        await append(conn, event_type="vouchers.expired",
                     payload={"programme_id": programme_id, "transfer_id": transfer_id,
                              "voucher_ids": [row.id for row in group],
                              "moved_cents": [row.left_cents for row in group], "total_cents": moved}, actor=actor)
        moved_total += moved
    return ExpiryRun(len(rows), moved_total, tuple(transfer_ids))



@dataclass(frozen=True, slots=True)
class ProgrammeStatistics:
    programme_id: int
    unit: str
    sold_cents: int  # paid for: orders paid or issued, and direct sales
    issued_count: int
    issued_cents: int  # face value of vouchers first issued (reissues are not new value)
    redeemed_cents: int  # taken by merchants, net of refunds
    outstanding_count: int
    outstanding_cents: int  # still spendable on active vouchers
    expired_count: int
    expired_cents: int  # moved to breakage
    revoked_count: int


async def programme_statistics(conn: AsyncConnection, programme_id: int) -> ProgrammeStatistics:
    programme = await get_rules(conn, programme_id)
    row = (await conn.execute(
        text(
            """
            SELECT
              (SELECT coalesce(sum(face_value_cents), 0) FROM voucher_orders
                WHERE programme_id = :id AND status IN ('paid', 'issued'))
              + (SELECT coalesce(sum(face_value_cents), 0) FROM vouchers
                  WHERE programme_id = :id AND order_id IS NULL AND reissue_of IS NULL) AS sold,
              count(*) FILTER (WHERE v.reissue_of IS NULL) AS issued_count,
              coalesce(sum(v.face_value_cents) FILTER (WHERE v.reissue_of IS NULL), 0) AS issued,
              count(*) FILTER (WHERE v.status = 'active' AND a.balance_cents > 0) AS outstanding_count,
              coalesce(sum(a.balance_cents) FILTER (WHERE v.status = 'active'), 0) AS outstanding,
              count(*) FILTER (WHERE v.status = 'expired') AS expired_count,
              count(*) FILTER (WHERE v.status = 'revoked') AS revoked_count,
              (SELECT coalesce(-sum(p.amount_cents), 0) FROM postings p
                 JOIN transfers t ON t.id = p.transfer_id
                 JOIN vouchers w ON w.account_id = p.account_id
                WHERE w.programme_id = :id AND t.kind IN ('voucher.redeem', 'voucher.refund')
                  AND t.phase IN ('posted', 'post_pending')) AS redeemed,
              (SELECT coalesce(sum(p.amount_cents), 0) FROM postings p JOIN transfers t ON t.id = p.transfer_id
                WHERE p.account_id = :breakage AND t.kind = 'voucher.expire') AS expired
            FROM vouchers v JOIN accounts a ON a.id = v.account_id
            WHERE v.programme_id = :id
            """
        ),
        {"id": programme_id, "breakage": programme.breakage_account_id},
    )).one()
    return ProgrammeStatistics(
        programme_id, programme.unit, int(row.sold), row.issued_count, int(row.issued), int(row.redeemed),
        row.outstanding_count, int(row.outstanding), row.expired_count, int(row.expired), row.revoked_count,
    )

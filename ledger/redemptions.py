"""Redemptions at a shop: preview, redeem, refund, and what the shop took.

A redemption moves value from the voucher's account to the merchant's account in the
programme's unit (ledger kind ``voucher.redeem``) and writes its ``merchant_takings`` row
in the same transaction; a refund moves it back (``voucher.refund``) with a negative row.
The ledger's floors, not a check beforehand, keep a voucher from going below zero when many
phones take the same voucher at once. Each redemption and refund returns a receipt signed
by the server (Ed25519) that the shop can keep and anyone can check with the public key.

This module never speaks HTTP and never writes a balance itself.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from audit.canonical import canonical, utc_text
from audit.keys import SigningKey, verify_signature
from ledger import merchants, tokens, vouchers
from ledger.errors import (
    DomainError, IdempotencyConflict, InsufficientFunds, InvalidInput, NotFound, refusal_of,
)
from ledger.programmes import RULE_COLUMNS, NotAcceptedHere, ProgrammeRules, acceptance, get_rules, rules_from_values
from ledger.takings import paris_day
from ledger.transfers import AMOUNT_CENTS_MAX, KEY_LENGTH_MAX, Posting, transfer

RECEIPT_DOMAIN = b"circuit-receipt-v1\x00"
RECEIPT_VERSION = 1
REFUND_WINDOW_DAYS_DEFAULT = 30
CLIENT_KEY_LENGTH_MAX = 64
# The ledger key is "voucher.redeem:<merchant id>:<client key>": it must fit the ledger's limit.
assert len("voucher.redeem:") + 20 + 1 + CLIENT_KEY_LENGTH_MAX <= KEY_LENGTH_MAX


class UnknownVoucher(DomainError):
    code = "unknown_voucher"
    message = "This is not a voucher of this scheme: check the code or scan again."
    message_fr = "Ce titre est inconnu du réseau : vérifiez le code ou scannez de nouveau."


class BadSignature(DomainError):
    code = "bad_signature"
    message = "The voucher's signature does not hold: it was altered or forged. Do not accept it."
    message_fr = "La signature du titre n'est pas valable : il a été modifié ou contrefait. Ne l'acceptez pas."


class InsufficientBalance(DomainError):
    code = "insufficient_balance"
    message = "The voucher does not hold enough for this amount."
    message_fr = "Le titre ne contient pas assez pour ce montant."


class AmountInvalid(DomainError):
    code = "amount_invalid"
    message = "The amount must be a positive number of cents."
    message_fr = "Le montant doit être un nombre positif de centimes."


class AlreadyRefunded(DomainError):
    code = "already_refunded"
    message = "This redemption was already refunded."
    message_fr = "Cet encaissement a déjà été remboursé."


class RefundNotAllowed(DomainError):
    code = "refund_not_allowed"
    message = "This redemption can no longer be refunded by you."
    message_fr = "Vous ne pouvez plus rembourser cet encaissement."


class RefundExceedsBalance(DomainError):
    code = "refund_exceeds_balance"
    message = "The shop's balance in the scheme is lower than the refund (it was already paid out)."
    message_fr = "Le solde du commerce dans le réseau est inférieur au remboursement (il a déjà été versé)."


class TakingNotFound(NotFound):
    code = "taking_not_found"
    message = "This shop has no transaction with this id."
    message_fr = "Ce commerce n'a aucune opération avec ce numéro."


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    message_fr: str
    details: dict[str, Any]

    @classmethod
    def of(cls, error: DomainError) -> Refusal:
        return cls(error.code, error.message, error.message_fr or "", dict(error.details))


@dataclass(frozen=True, slots=True)
class Preview:
    """What a scanned voucher is, and whether this shop can take it now (``refusal`` None)."""

    voucher_id: int
    programme_id: int
    programme_name: str
    unit: str
    balance_cents: int
    expires_at: datetime
    partial_redemption: bool
    code_hint: str  # the code's last four symbols, to read back to the customer
    refusal: Refusal | None


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed receipt: ``body`` is exactly what was signed (RFC 8785 canonical JSON)."""

    body: dict[str, Any]
    signature: str  # base64url, no padding
    key_id: str
    replayed: bool = False

    @property
    def taking_id(self) -> int:
        return self.body["taking_id"]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verify_receipt(body: dict[str, Any], signature: str, public_key: bytes) -> bool:
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return verify_signature(public_key, RECEIPT_DOMAIN, canonical(body), raw)


def _hint(code: str) -> str:
    return code[-4:]


# --- finding the voucher --------------------------------------------------------------------

# Voucher signing keys are only ever added (a retired key still verifies its tokens), so the
# known set is kept in memory and read again only for a key id not seen yet.
_public_keys_known: dict[str, bytes] = {}


async def _all_public_keys(source: AsyncConnection | AsyncEngine) -> dict[str, bytes]:
    """The known set, read again (a key id not seen yet)."""
    if isinstance(source, AsyncEngine):
        async with source.connect() as conn:
            _public_keys_known.update(await vouchers.public_keys(conn))
    else:
        _public_keys_known.update(await vouchers.public_keys(source))
    return _public_keys_known


# What a scan needs, in one round trip: the voucher, its available balance, the shop's
# status and category, its approval for the programme, its account in the programme's unit,
# an earlier taking under this idempotency key (with its receipt), and the programme's rules.
# ``{merchant}`` is the shop's id and ``{client_key}`` the idempotency key: parameters here,
# or columns of an enclosing statement (the HTTP redeem reads, for a batch of requests, each
# signed-in staff member, its rate limit and this in one go).
_VOUCHER_FIELDS = len(fields(vouchers.Voucher))
SCAN_TEMPLATE = """
    SELECT {voucher_columns},
           va.balance_cents - va.pending_debits_cents AS available_cents,
           m.status AS merchant_status, m.category, mp.status AS approval,
           (SELECT a.id FROM accounts a WHERE a.owner_type = 'merchant' AND a.owner_id = CAST(m.id AS text)
              AND a.kind = 'merchant' AND a.unit = p.unit ORDER BY a.id LIMIT 1) AS merchant_account_id,
           r.kind AS replay_kind, r.voucher_id AS replay_voucher_id, r.amount_cents AS replay_amount_cents,
           r.transfer_id AS replay_transfer_id, r.receipt, r.receipt_signature, r.receipt_key_id,
           {rule_columns}
    FROM vouchers v
    JOIN accounts va ON va.id = v.account_id
    JOIN programmes p ON p.id = v.programme_id
    JOIN merchants m ON m.id = {merchant}
    LEFT JOIN merchant_programmes mp ON mp.merchant_id = m.id AND mp.programme_id = p.id
    LEFT JOIN merchant_takings r ON r.merchant_id = m.id AND r.client_key = {client_key}
    WHERE {where}
""".replace("{voucher_columns}", ", ".join(f"v.{field.name}" for field in fields(vouchers.Voucher))).replace(
    "{rule_columns}", ", ".join(f"p.{column} AS rule_{column}" for column in RULE_COLUMNS))
SCAN_COLUMNS = _VOUCHER_FIELDS + 12 + len(RULE_COLUMNS)
# A token names the voucher's id, a typed code its code: one statement each, so that each
# keeps its index whatever plan the server caches.
SCAN_BY_ID = "v.id = :voucher_id"
SCAN_BY_CODE = "v.code = :code"
_SCAN_SQL = {where: text(SCAN_TEMPLATE.replace("{merchant}", ":merchant_id").replace("{client_key}", ":client_key")
                         .replace("{where}", where))
             for where in (SCAN_BY_ID, SCAN_BY_CODE)}


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a scanned token or typed code names, before the database is read: the voucher's
    id (token) or its code, or the refusal to give once the caller may know it."""

    voucher_id: int | None
    programme_id: int | None
    code: str | None
    refusal: DomainError | None

    @property
    def where(self) -> str:
        """Which of SCAN_BY_ID, SCAN_BY_CODE finds it (with :attr:`params`)."""
        return SCAN_BY_CODE if self.code is not None else SCAN_BY_ID

    @property
    def params(self) -> dict[str, Any]:
        return {"code": self.code} if self.code is not None else {"voucher_id": self.voucher_id}


class Scanned(NamedTuple):
    voucher: vouchers.Voucher
    context: Any  # the scan's columns: available_cents, merchant_status, … (see SCAN_TEMPLATE)
    programme: ProgrammeRules


async def lookup(source: AsyncConnection | AsyncEngine, *, token: str | None, code: str | None) -> Lookup:
    """Check a scanned token's signature (or a typed code's check symbol) without reading the
    voucher; a failure is kept in ``refusal`` (``bad_signature``, ``unknown_voucher``). The
    database (``source``: a connection, or an engine to connect to) is read only for a
    signing key not seen yet."""
    if bool(token) == bool(code):
        return Lookup(None, None, None, UnknownVoucher("Send either the scanned token or the typed code.",
                                                       message_fr="Envoyez soit le titre scanné, soit le code saisi."))
    try:
        if token:
            try:  # the token is parsed once: its key id is looked up by the verification itself
                claims = tokens.verify_token(token, _public_keys_known)
            except tokens.UnknownSigningKey:
                claims = tokens.verify_token(token, await _all_public_keys(source))
            return Lookup(claims.voucher_id, claims.programme_id, None, None)
        return Lookup(None, None, tokens.parse_code(code or ""), None)
    except (tokens.BadSignature, tokens.UnknownSigningKey) as error:
        return Lookup(None, None, None, BadSignature(reason=error.code))
    except (tokens.TokenMalformed, tokens.CodeMalformed, tokens.CodeCheckFailed) as error:
        return Lookup(None, None, None, UnknownVoucher(reason=error.code))


def scanned(found: Lookup, row: Any, *, offset: int = 0) -> Scanned:
    """The voucher and the shop's context from a row whose columns from ``offset`` on are
    ``SCAN_TEMPLATE``'s (None, or all NULL when no voucher matched), or the lookup's refusal."""
    if found.refusal is not None:
        raise found.refusal
    if row is None or row[offset] is None or (found.programme_id is not None and row[offset + 1] != found.programme_id):
        raise UnknownVoucher(reason="voucher_not_found")
    end = offset + SCAN_COLUMNS
    return Scanned(vouchers.Voucher(*row[offset:offset + _VOUCHER_FIELDS]), row,
                   rules_from_values(row[end - len(RULE_COLUMNS):end]))


async def _scan(conn: AsyncConnection, merchant_id: int, *, token: str | None, code: str | None,
                client_key: str | None) -> Scanned:
    found = await lookup(conn, token=token, code=code)
    row = None
    if found.refusal is None:
        row = (await conn.execute(_SCAN_SQL[found.where], {"merchant_id": merchant_id, "client_key": client_key,
                                              **found.params})).one_or_none()
    return scanned(found, row)


def _check_taking(merchant: Any, programme: ProgrammeRules, merchant_id: int, voucher: vouchers.Voucher) -> None:
    """Refuse unless this shop may take this voucher now, in the order a cashier can act on."""
    merchants.check_can_act(merchant.merchant_status)
    if merchant.approval != "approved":
        raise NotAcceptedHere(reason="merchant_not_approved_for_programme", programme_id=programme.id)
    rule = acceptance(programme, merchant.category, merchant_id)
    if rule is not None:
        raise NotAcceptedHere(reason=rule, programme_id=programme.id)
    vouchers.check_usable(voucher)


async def preview(conn: AsyncConnection, *, merchant_id: int, token: str | None = None, code: str | None = None) -> Preview:
    """What the voucher is; a refusal of a known voucher is returned in ``refusal``, so the
    cashier sees what it is and why not. An unknown or forged voucher is raised."""
    voucher, context, programme = await _scan(conn, merchant_id, token=token, code=code, client_key=None)
    balance_cents = context.available_cents
    refusal = None
    try:
        _check_taking(context, programme, merchant_id, voucher)
        if balance_cents <= 0:
            raise InsufficientBalance(available_cents=balance_cents)
    except DomainError as error:
        refusal = Refusal.of(error)
    return Preview(voucher.id, programme.id, programme.name, programme.unit, balance_cents, voucher.expires_at,
                   programme.partial_redemption, _hint(voucher.code), refusal)


# --- redeem ---------------------------------------------------------------------------------

def _check_client_key(client_key: str) -> None:
    if not isinstance(client_key, str) or not 1 <= len(client_key) <= CLIENT_KEY_LENGTH_MAX:
        raise InvalidInput(f"the idempotency key has 1 to {CLIENT_KEY_LENGTH_MAX} characters",
                           message_fr=f"la clé d'idempotence a de 1 à {CLIENT_KEY_LENGTH_MAX} caractères")


def _check_amount(amount_cents: Any) -> None:
    if type(amount_cents) is not int or not 0 < amount_cents <= AMOUNT_CENTS_MAX:
        raise AmountInvalid(amount_cents=str(amount_cents))


_TAKING_BY_KEY_SQL = text(
    """
    SELECT kind, voucher_id, amount_cents, refund_of, receipt, receipt_signature, receipt_key_id
    FROM merchant_takings WHERE merchant_id = :merchant_id AND client_key = :client_key
    """
)


async def _replay(conn: AsyncConnection, merchant_id: int, client_key: str, **request: Any) -> Receipt | None:
    """The receipt already given for this key, if any; the same key for another request
    (``request``: the columns it would have written) is refused."""
    row = (await conn.execute(_TAKING_BY_KEY_SQL, {"merchant_id": merchant_id, "client_key": client_key})).one_or_none()
    if row is None:
        return None
    if any(getattr(row, column) != value for column, value in request.items()):
        raise IdempotencyConflict(key=client_key)
    return stored_receipt(row)


async def receipt_of(conn: AsyncConnection, *, taking_id: int, merchant_id: int) -> Receipt:
    """The receipt this shop was given for one of its takings."""
    row = (await conn.execute(
        text("SELECT receipt, receipt_signature, receipt_key_id FROM merchant_takings "
             "WHERE id = :id AND merchant_id = :merchant_id AND receipt IS NOT NULL"),
        {"id": taking_id, "merchant_id": merchant_id})).one_or_none()
    if row is None:
        raise TakingNotFound(taking_id=taking_id)
    return stored_receipt(row)


def stored_receipt(row: Any) -> Receipt:
    """The receipt kept on a taking row (columns receipt, receipt_signature, receipt_key_id)."""
    return Receipt(orjson.loads(bytes(row.receipt)), b64url(bytes(row.receipt_signature)), row.receipt_key_id,
                   replayed=True)


_INSERT_TAKING_SQL = text(
    """
    INSERT INTO merchant_takings (id, merchant_id, programme_id, kind, amount_cents, transfer_id, voucher_id,
        refund_of, effective_at, user_id, client_key, balance_after_cents, audit_event_id, receipt,
        receipt_signature, receipt_key_id)
    OVERRIDING SYSTEM VALUE
    VALUES (:id, :merchant_id, :programme_id, :kind, :amount_cents, :transfer_id, :voucher_id, :refund_of,
        :effective_at, :user_id, :client_key, :balance_after_cents, :audit_event_id, :receipt,
        :receipt_signature, :receipt_key_id)
    """
)


_RECORD_SQL = text(
    """
    WITH taking AS (SELECT nextval(pg_get_serial_sequence('merchant_takings', 'id')) AS id),
         moved AS (SELECT t.effective_at, a.balance_cents - a.pending_debits_cents AS balance_after
                   FROM transfers t, accounts a WHERE t.id = :transfer_id AND a.id = :voucher_account_id)
    SELECT taking.id, moved.effective_at, moved.balance_after,
           audit_append(:event_type, CAST(:event AS jsonb) || jsonb_build_object(
               'taking_id', taking.id, 'voucher_balance_after_cents', moved.balance_after), :actor)
    FROM taking, moved
    """
)


async def _record(
    conn: AsyncConnection, key: SigningKey, *, kind: str, merchant_id: int, programme: ProgrammeRules,
    voucher: vouchers.Voucher, amount_cents: int, transfer_id: int, user_id: int, client_key: str,
    refund_of: int | None, actor: str,
) -> Receipt:
    """Write the taking row, its audit event and its signed receipt (one transaction with the transfer)."""
    signed_cents = -amount_cents if kind == "refund" else amount_cents
    event = {
        "kind": kind, "merchant_id": merchant_id, "programme_id": programme.id, "voucher_id": voucher.id,
        "amount_cents": signed_cents, "transfer_id": transfer_id, "refund_of": refund_of, "user_id": user_id,
    }
    # One round trip: the taking's id, the transfer's time, the voucher's balance now (its row
    # is locked by the transfer, so this is the balance right after it), and the audit event.
    taking_id, effective_at, balance_after, audit_event_id = (await conn.execute(_RECORD_SQL, {
        "transfer_id": transfer_id, "voucher_account_id": voucher.account_id, "actor": actor,
        "event_type": f"voucher.{'refunded' if kind == 'refund' else 'redeemed'}",
        "event": orjson.dumps(event).decode(),
    })).one()
    return await _sign_and_insert(
        conn, key, event={"taking_id": taking_id, **event, "voucher_balance_after_cents": balance_after},
        programme=programme, voucher=voucher, effective_at=effective_at, audit_event_id=audit_event_id,
        client_key=client_key)


async def _sign_and_insert(
    conn: AsyncConnection, key: SigningKey, *, event: dict[str, Any], programme: ProgrammeRules,
    voucher: vouchers.Voucher, effective_at: datetime, audit_event_id: int, client_key: str,
) -> Receipt:
    """Sign the receipt of a taking (``event``: what its audit event says) and write its row."""
    receipt, row = _signed(key, event=event, programme=programme, voucher=voucher, effective_at=effective_at,
                           audit_event_id=audit_event_id, client_key=client_key)
    await conn.execute(_INSERT_TAKING_SQL, row)
    return receipt


def _signed(
    key: SigningKey, *, event: dict[str, Any], programme: ProgrammeRules, voucher: vouchers.Voucher,
    effective_at: datetime, audit_event_id: int, client_key: str,
) -> tuple[Receipt, dict[str, Any]]:
    """The signed receipt of a taking (``event``: what its audit event says) and the
    parameters of its ``merchant_takings`` row, which keeps the receipt as signed."""
    body = {
        "v": RECEIPT_VERSION, **event, "unit": programme.unit, "programme_name": programme.name,
        "code_hint": _hint(voucher.code), "at": utc_text(effective_at), "audit_event_id": audit_event_id,
        "idempotency_key": client_key,
    }
    raw = canonical(body)
    signature = key.sign(RECEIPT_DOMAIN, raw)
    row = {
        "id": event["taking_id"], "merchant_id": event["merchant_id"], "programme_id": programme.id,
        "kind": event["kind"], "amount_cents": event["amount_cents"], "transfer_id": event["transfer_id"],
        "voucher_id": voucher.id, "refund_of": event["refund_of"], "effective_at": effective_at,
        "user_id": event["user_id"], "client_key": client_key, "balance_after_cents": event["voucher_balance_after_cents"],
        "audit_event_id": audit_event_id, "receipt": raw, "receipt_signature": signature, "receipt_key_id": key.key_id,
    }
    # The body as signed (canonical key order), so a replay's answer is byte for byte the same.
    return Receipt(orjson.loads(raw), b64url(signature), key.key_id), row


async def _receipt_of_transfer(conn: AsyncConnection, transfer_id: int) -> Receipt:
    row = (await conn.execute(
        text("SELECT receipt, receipt_signature, receipt_key_id FROM merchant_takings WHERE transfer_id = :id"),
        {"id": transfer_id})).one()
    return stored_receipt(row)


async def redeem(
    conn: AsyncConnection, key: SigningKey, *, merchant_id: int, user_id: int, amount_cents: int, client_key: str,
    token: str | None = None, code: str | None = None, actor: str,
) -> Receipt:
    """Take ``amount_cents`` from the voucher for this shop; the same ``client_key`` again
    returns the first receipt and moves nothing."""
    _check_client_key(client_key)
    found = await _scan(conn, merchant_id, token=token, code=code, client_key=client_key)
    return await take(conn, key, found, merchant_id=merchant_id, user_id=user_id, amount_cents=amount_cents,
                      client_key=client_key, actor=actor)


@dataclass(frozen=True, slots=True)
class Move:
    """A redemption checked against everything the scan read, for :func:`take_many` to move."""

    merchant_id: int
    user_id: int
    voucher: vouchers.Voucher
    programme: ProgrammeRules
    merchant_account_id: int
    amount_cents: int
    client_key: str
    actor: str


def checked(
    found: Scanned, *, merchant_id: int, user_id: int, amount_cents: Any, client_key: str, actor: str,
) -> Receipt | Move:
    """The receipt already given under ``client_key`` (a repeat), or the redemption once every
    check the cashier can act on holds (a refusal is raised, in the order the till shows)."""
    _check_client_key(client_key)
    voucher, context, programme = found
    if context.replay_kind is not None:
        if (context.replay_kind, context.replay_voucher_id, context.replay_amount_cents) != ("redeem", voucher.id, amount_cents):
            raise IdempotencyConflict(key=client_key)
        return stored_receipt(context)
    _check_amount(amount_cents)
    _check_taking(context, programme, merchant_id, voucher)
    merchant_account = context.merchant_account_id
    if merchant_account is None:  # approval opens it; its absence is a broken approval, not the cashier's fault
        raise NotAcceptedHere(reason="merchant_account_missing", programme_id=programme.id)
    if not programme.partial_redemption:
        whole = context.available_cents
        if amount_cents != whole:
            raise AmountInvalid("This voucher must be used in one go, for its whole balance.",
                                message_fr="Ce titre s'utilise en une seule fois, pour tout son solde.",
                                reason="whole_balance_only", available_cents=whole)
    return Move(merchant_id, user_id, voucher, programme, merchant_account, amount_cents, client_key, actor)


_MOVES_SQL = text(
    """
    SELECT n, transfer_id, created, taking_id, effective_at, balance_after_cents, audit_event_id,
           refusal_sqlstate, refusal_detail
    FROM merchant_redeem_moves(CAST(:moves AS jsonb))
    """
)


def _event(move: Move) -> dict[str, Any]:
    return {"kind": "redeem", "merchant_id": move.merchant_id, "programme_id": move.programme.id,
            "voucher_id": move.voucher.id, "amount_cents": move.amount_cents, "refund_of": None,
            "user_id": move.user_id}


def _refused(sqlstate: str, detail: str | None, move: Move) -> DomainError:
    refusal = refusal_of(sqlstate, detail)
    assert refusal is not None, f"merchant_redeem_moves returns only the ledger's refusals, not {sqlstate}"
    if isinstance(refusal, InsufficientFunds):
        return InsufficientBalance(available_cents=refusal.details.get("available_cents", 0),
                                   amount_cents=move.amount_cents)
    return refusal


async def take_many(conn: AsyncConnection, key: SigningKey, moves: Sequence[Move]) -> list[Receipt | DomainError]:
    """Redeem checked redemptions in the caller's transaction, in three statements whatever
    their number: the ledger moves with their audit events (``merchant_redeem_moves``, each
    move refused alone), then, once the receipts are signed, their takings rows. Each one's
    outcome, in ``moves``' order: its receipt, or the ledger's refusal (nothing of it written).

    All the accounts are locked first, in id order, so that two batches taking the same
    accounts queue rather than deadlock; the moves run in voucher account order. Two moves
    under one key are one redemption: the first moves, the second gets its receipt (as a
    repeat), as does a move whose twin was committed by another transaction meanwhile."""
    order = sorted(range(len(moves)), key=lambda i: (moves[i].voucher.account_id, moves[i].merchant_account_id))
    rows = (await conn.execute(_MOVES_SQL, {"moves": orjson.dumps([{
        "key": f"voucher.redeem:{move.merchant_id}:{move.client_key}", "voucher_account_id": move.voucher.account_id,
        "merchant_account_id": move.merchant_account_id, "amount_cents": move.amount_cents, "actor": move.actor,
        "metadata": {"merchant_id": move.merchant_id, "voucher_id": move.voucher.id,
                     "programme_id": move.programme.id, "user_id": move.user_id},
        "event": _event(move),
    } for move in (moves[i] for i in order)]).decode()})).all()
    assert len(rows) == len(moves)
    outcomes: list[Receipt | DomainError | None] = [None] * len(moves)
    signed: dict[int, Receipt] = {}
    takings: list[dict[str, Any]] = []
    twins: list[tuple[int, int]] = []
    for row in rows:
        at = order[row.n - 1]
        move = moves[at]
        if row.refusal_sqlstate is not None:
            outcomes[at] = _refused(row.refusal_sqlstate, row.refusal_detail, move)
        elif not row.created:  # the same request, moved earlier in this batch or committed by a concurrent twin
            twins.append((at, row.transfer_id))
        else:
            receipt, taking = _signed(
                key, event={"taking_id": row.taking_id, **_event(move), "transfer_id": row.transfer_id,
                            "voucher_balance_after_cents": row.balance_after_cents},
                programme=move.programme, voucher=move.voucher, effective_at=row.effective_at,
                audit_event_id=row.audit_event_id, client_key=move.client_key)
            outcomes[at] = signed[row.transfer_id] = receipt
            takings.append(taking)
    if takings:
        await conn.execute(_INSERT_TAKING_SQL, takings)
    for at, transfer_id in twins:
        outcomes[at] = (replace(signed[transfer_id], replayed=True) if transfer_id in signed
                        else await _receipt_of_transfer(conn, transfer_id))
    return outcomes  # type: ignore[return-value]  # every slot was filled above


async def take(
    conn: AsyncConnection, key: SigningKey, found: Scanned, *, merchant_id: int, user_id: int, amount_cents: int,
    client_key: str, actor: str,
) -> Receipt:
    """Redeem a scanned voucher (:func:`redeem` once the scan is read): :func:`checked`,
    then :func:`take_many` of this one redemption; a refusal is raised."""
    move = checked(found, merchant_id=merchant_id, user_id=user_id, amount_cents=amount_cents,
                   client_key=client_key, actor=actor)
    if isinstance(move, Receipt):
        return move
    (outcome,) = await take_many(conn, key, [move])
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


# --- refund ---------------------------------------------------------------------------------

async def _live_voucher(conn: AsyncConnection, voucher: vouchers.Voucher) -> vouchers.Voucher:
    """The voucher that now holds what was left of ``voucher``: itself, or the replacement it
    moved to when revoked. A voucher revoked without a replacement takes nothing back."""
    seen = {voucher.id}
    while voucher.status == "revoked":
        if voucher.replaced_by is None or voucher.replaced_by in seen:
            raise vouchers.Revoked(voucher_id=voucher.id, replaced_by=None)
        seen.add(voucher.replaced_by)
        voucher = await vouchers.get_voucher(conn, voucher.replaced_by)
    vouchers.check_usable(voucher)
    return voucher


async def refund(
    conn: AsyncConnection, key: SigningKey, *, merchant_id: int, user_id: int, is_owner: bool, taking_id: int,
    client_key: str, actor: str, window_days: int = REFUND_WINDOW_DAYS_DEFAULT, now: datetime | None = None,
) -> Receipt:
    """Give a redemption back to the voucher (or to its replacement): the owner within
    ``window_days``, a cashier the same Paris day only; once."""
    _check_client_key(client_key)
    replay = await _replay(conn, merchant_id, client_key, kind="refund", refund_of=taking_id)
    if replay is not None:
        return replay
    now = now or datetime.now(timezone.utc)
    original = (await conn.execute(
        text(
            """
            SELECT t.id, t.kind, t.programme_id, t.amount_cents, t.voucher_id, t.effective_at,
                   (SELECT r.id FROM merchant_takings r WHERE r.refund_of = t.id) AS refunded_by
            FROM merchant_takings t WHERE t.id = :id AND t.merchant_id = :merchant_id FOR UPDATE
            """
        ),
        {"id": taking_id, "merchant_id": merchant_id},
    )).one_or_none()
    if original is None:
        raise TakingNotFound(taking_id=taking_id)
    if original.kind != "redeem":
        raise RefundNotAllowed("Only a voucher redemption can be refunded here.",
                               message_fr="Seul l'encaissement d'un titre se rembourse ici.", reason="not_a_redemption")
    if original.refunded_by is not None:
        raise AlreadyRefunded(refund_id=original.refunded_by)
    merchants.check_can_act(await conn.scalar(text("SELECT status FROM merchants WHERE id = :id"), {"id": merchant_id}))
    if is_owner:
        if now - original.effective_at > timedelta(days=window_days):
            raise RefundNotAllowed(f"Refunds are possible for {window_days} days after the redemption.",
                                   message_fr=f"Le remboursement est possible pendant {window_days} jours après l'encaissement.",
                                   reason="window_passed", window_days=window_days)
    elif paris_day(original.effective_at) != paris_day(now):
        raise RefundNotAllowed("A cashier can refund only on the day of the redemption; ask the owner.",
                               message_fr="Un caissier ne rembourse que le jour même ; demandez au responsable.",
                               reason="cashier_same_day_only")
    voucher = await _live_voucher(conn, await vouchers.get_voucher(conn, original.voucher_id))
    programme = await get_rules(conn, original.programme_id)
    merchant_account = await merchants.merchant_account(conn, merchant_id, programme.unit)
    amount_cents = original.amount_cents
    try:
        result = await transfer(
            conn, key=f"voucher.refund:{taking_id}", kind="voucher.refund",
            postings=[Posting(merchant_account, -amount_cents), Posting(voucher.account_id, amount_cents)],
            metadata={"merchant_id": merchant_id, "voucher_id": voucher.id, "programme_id": programme.id,
                      "refund_of": taking_id, "user_id": user_id},
        )
    except InsufficientFunds:
        raise RefundExceedsBalance(amount_cents=amount_cents) from None
    except IdempotencyConflict:  # another refund of this redemption, by someone else, got there first
        raise AlreadyRefunded() from None
    if not result.created:
        raise AlreadyRefunded()
    return await _record(conn, key, kind="refund", merchant_id=merchant_id, programme=programme, voucher=voucher,
                         amount_cents=amount_cents, transfer_id=result.transfer_id, user_id=user_id,
                         client_key=client_key, refund_of=taking_id, actor=actor)

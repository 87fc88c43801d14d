"""Employer voucher orders: draft → confirmed (quoted) → paid → issued; cancellable before issue.

- A draft holds lines (beneficiary, optional email, amount), the event the gift is for and the
  co-branding; its lines may be replaced as a whole, all checked before any is saved.
- Confirming fixes the quote: face value, the programme's purchase fee and VAT on it, and
  warns about lines above the URSSAF gift ceiling (per beneficiary, per event).
- Paying (the operator records the bank transfer) is one ledger transfer: the euros come in,
  the face value lands in the programme's reserve, the fee and its VAT in their accounts, and
  as much value leaves the float into the order's clearing account (so circulation and
  reserve stay equal while the order waits to be issued).
- Issuing is ONE ledger transfer from the clearing account to one voucher account per line.
- Cancelling a paid order reverses its payment.

Every transition locks the order row, is refused with ``illegal_transition`` unless the
order is in a state it leaves from, and is an audit event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append
from ledger.accounts import AccountKind, open_account
from ledger.cobranding import Logo, check_message, colour
from ledger.errors import DomainError, InvalidInput, NotFound
from ledger.order_lines import LineIn
from ledger.programmes import ProgrammeRules, get_rules
from ledger.scheme import RESERVE_UNIT
from ledger.transfers import Posting, reverse, transfer
from ledger.vouchers import Voucher, VoucherLine, issue_vouchers

PARIS = ZoneInfo("Europe/Paris")
VAT_RATE_BP = 2_000  # 20 % VAT on the scheme's purchase fee
# The occasions URSSAF's tolerance for gifts to employees recognises.
EVENTS = ("christmas", "birth", "marriage", "retirement", "mothers_day", "fathers_day", "saint_catherine",
          "saint_nicholas", "back_to_school", "other")
EVENT_LABEL_LENGTH_MAX = 200
PAYMENT_REFERENCE_LENGTH_MAX = 140
TRANSITIONS = {
    "confirm": ({"draft"}, "confirmed"),
    "pay": ({"confirmed"}, "paid"),
    "issue": ({"paid"}, "issued"),
    "cancel": ({"draft", "confirmed", "paid"}, "cancelled"),
}


class IllegalTransition(DomainError):
    code = "illegal_transition"
    message = "The order is not in a state that allows this."
    message_fr = "La commande n'est pas dans un état qui permet cette opération."


class PaymentMismatch(DomainError):
    code = "payment_mismatch"
    message = "The amount paid is not the order's total."
    message_fr = "Le montant payé n'est pas le total de la commande."


class OrderEmpty(DomainError):
    code = "order_empty"
    message = "An order needs at least one line before it is confirmed."
    message_fr = "Une commande doit compter au moins une ligne avant d'être confirmée."


@dataclass(frozen=True, slots=True)
class OrderLine:
    id: int
    line_no: int
    beneficiary_name: str
    beneficiary_email: str | None
    amount_cents: int


@dataclass(frozen=True, slots=True)
class CeilingWarning:
    beneficiary_name: str
    beneficiary_email: str | None
    line_nos: tuple[int, ...]
    amount_cents: int
    ceiling_cents: int


@dataclass(frozen=True, slots=True)
class Quote:
    lines_count: int
    face_value_cents: int
    fee_bp: int
    fee_cents: int
    fee_vat_cents: int
    total_cents: int
    ceiling_year: int
    ceiling_cents: int
    warnings: tuple[CeilingWarning, ...]


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    employer_id: int
    programme_id: int
    status: str
    event: str
    event_label: str
    message: str
    colour_primary: str
    colour_secondary: str
    logo_media_type: str | None
    payment_reference: str | None
    payment_transfer_id: int | None
    issue_transfer_id: int | None
    created_at: datetime
    confirmed_at: datetime | None
    paid_at: datetime | None
    issued_at: datetime | None
    cancelled_at: datetime | None
    total_cents: int | None


_COLUMNS = (
    "id, employer_id, programme_id, status, event, event_label, message, colour_primary, colour_secondary, "
    "logo_media_type, payment_reference, payment_transfer_id, issue_transfer_id, created_at, confirmed_at, "
    "paid_at, issued_at, cancelled_at, total_cents"
)


def _check_event(event: str, label: str) -> tuple[str, str]:
    if event not in EVENTS:
        raise InvalidInput(f"event: one of {', '.join(EVENTS)}", message_fr=f"event : {', '.join(EVENTS)}", events=list(EVENTS))
    label = label.strip()
    if len(label) > EVENT_LABEL_LENGTH_MAX:
        raise InvalidInput(f"event_label: at most {EVENT_LABEL_LENGTH_MAX} characters",
                           message_fr=f"event_label : {EVENT_LABEL_LENGTH_MAX} caractères au plus")
    return event, label


async def create_order(
    conn: AsyncConnection, *, employer_id: int, programme_id: int, event: str, event_label: str = "",
    message: str = "", colour_primary: str = "#1F4E79", colour_secondary: str = "#F2C14E",
    created_by: int | None = None, actor: str,
) -> Order:
    event, event_label = _check_event(event, event_label)
    message = check_message(message)
    primary, secondary = colour(colour_primary), colour(colour_secondary)
    programme = await get_rules(conn, programme_id)
    issuer_id = await conn.scalar(text("SELECT issuer_id FROM employers WHERE id = :id"), {"id": employer_id})
    if issuer_id is None:
        raise NotFound("no employer has this id", message_fr="Aucun employeur ne porte ce numéro.", employer_id=employer_id)
    if issuer_id != programme.issuer_id or programme.kind == "local_currency":
        raise InvalidInput("this programme does not sell vouchers to this employer",
                           message_fr="ce programme ne vend pas de titres à cet employeur", programme_id=programme_id)
    order_id = (await conn.execute(
        text(
            "INSERT INTO voucher_orders (employer_id, programme_id, event, event_label, message, colour_primary, "
            "colour_secondary, created_by) VALUES (:employer_id, :programme_id, :event, :label, :message, :primary, "
            ":secondary, :created_by) RETURNING id"
        ),
        {"employer_id": employer_id, "programme_id": programme_id, "event": event, "label": event_label,
         "message": message, "primary": primary, "secondary": secondary, "created_by": created_by},
    )).scalar_one()
    await append(conn, event_type="voucher_order.created",
                 payload={"order_id": order_id, "employer_id": employer_id, "programme_id": programme_id,
                          "event": event}, actor=actor)
    return await get_order(conn, order_id)


async def get_order(conn: AsyncConnection, order_id: int, *, for_update: bool = False) -> Order:
    row = (await conn.execute(
        text(f"SELECT {_COLUMNS} FROM voucher_orders WHERE id = :id" + (" FOR UPDATE" if for_update else "")),
        {"id": order_id},
    )).one_or_none()
    if row is None:
        raise NotFound("no order has this id", message_fr="Aucune commande ne porte ce numéro.", order_id=order_id)
    return Order(*row)


async def list_orders(conn: AsyncConnection, *, employer_id: int | None = None) -> list[Order]:
    rows = (await conn.execute(
        text(f"SELECT {_COLUMNS} FROM voucher_orders WHERE CAST(:e AS bigint) IS NULL OR employer_id = :e ORDER BY id"),
        {"e": employer_id},
    )).all()
    return [Order(*row) for row in rows]


async def get_lines(conn: AsyncConnection, order_id: int) -> list[OrderLine]:
    rows = (await conn.execute(
        text("SELECT id, line_no, beneficiary_name, beneficiary_email, amount_cents FROM voucher_order_lines "
             "WHERE order_id = :id ORDER BY line_no"),
        {"id": order_id},
    )).all()
    return [OrderLine(*row) for row in rows]


async def get_logo(conn: AsyncConnection, order_id: int) -> Logo | None:
    row = (await conn.execute(
        text("SELECT logo, logo_media_type FROM voucher_orders WHERE id = :id"), {"id": order_id}
    )).one_or_none()
    return Logo(bytes(row.logo), row.logo_media_type) if row and row.logo is not None else None


def _require(order: Order, action: str) -> str:
    allowed, target = TRANSITIONS[action]
    if order.status not in allowed:
        raise IllegalTransition(order_id=order.id, order_status=order.status, action=action,
                                allowed_from=sorted(allowed))
    return target


async def _draft(conn: AsyncConnection, order_id: int) -> Order:
    order = await get_order(conn, order_id, for_update=True)
    if order.status != "draft":
        raise IllegalTransition("Only a draft order can be changed.", message_fr="Seule une commande en brouillon peut être modifiée.",
                                order_id=order_id, order_status=order.status, action="edit", allowed_from=["draft"])
    return order


async def replace_lines(conn: AsyncConnection, order_id: int, lines: list[LineIn], *, actor: str) -> list[OrderLine]:
    """Replace a draft's lines (already checked by ledger.order_lines) in one statement each way."""
    await _draft(conn, order_id)
    await conn.execute(text("DELETE FROM voucher_order_lines WHERE order_id = :id"), {"id": order_id})
    await conn.execute(
        text(
            "INSERT INTO voucher_order_lines (order_id, line_no, beneficiary_name, beneficiary_email, amount_cents) "
            "SELECT :id, n, name, email, amount FROM unnest(CAST(:names AS text[]), CAST(:emails AS text[]), "
            "CAST(:amounts AS bigint[])) WITH ORDINALITY AS l(name, email, amount, n)"
        ),
        {"id": order_id, "names": [line.beneficiary_name for line in lines],
         "emails": [line.beneficiary_email for line in lines], "amounts": [line.amount_cents for line in lines]},
    )
    await append(conn, event_type="voucher_order.lines_replaced",
                 payload={"order_id": order_id, "lines": len(lines),
                          "face_value_cents": sum(line.amount_cents for line in lines)}, actor=actor)
    return await get_lines(conn, order_id)


async def set_cobranding(
    conn: AsyncConnection, order_id: int, *, actor: str, message: str | None = None,
    colour_primary: str | None = None, colour_secondary: str | None = None, logo: Logo | None = None,
    event: str | None = None, event_label: str | None = None,
) -> Order:
    order = await _draft(conn, order_id)
    event_value, label = _check_event(event or order.event, order.event_label if event_label is None else event_label)
    values = {
        "message": order.message if message is None else check_message(message),
        "primary": order.colour_primary if colour_primary is None else colour(colour_primary),
        "secondary": order.colour_secondary if colour_secondary is None else colour(colour_secondary),
        "event": event_value, "label": label, "id": order_id,
    }
    await conn.execute(
        text("UPDATE voucher_orders SET message = :message, colour_primary = :primary, colour_secondary = :secondary, "
             "event = :event, event_label = :label WHERE id = :id"),
        values,
    )
    if logo is not None:
        await conn.execute(text("UPDATE voucher_orders SET logo = :logo, logo_media_type = :type WHERE id = :id"),
                           {"logo": logo.data, "type": logo.media_type, "id": order_id})
    await append(conn, event_type="voucher_order.cobranding_changed",
                 payload={"order_id": order_id, "message": values["message"], "colour_primary": values["primary"],
                          "colour_secondary": values["secondary"], "event": event_value,
                          "logo": None if logo is None else {"media_type": logo.media_type, "bytes": len(logo.data)}},
                 actor=actor)
    return await get_order(conn, order_id)


async def gift_ceiling(conn: AsyncConnection, year: int) -> tuple[int, int]:
    """(year, cents) of the URSSAF gift ceiling in force: that year's, else the latest before it."""
    row = (await conn.execute(
        text("SELECT year, amount_cents FROM gift_ceilings WHERE year <= :year ORDER BY year DESC LIMIT 1"), {"year": year}
    )).one_or_none()
    if row is None:
        row = (await conn.execute(text("SELECT year, amount_cents FROM gift_ceilings ORDER BY year LIMIT 1"))).one()
    return row.year, row.amount_cents


def _fee(face_value_cents: int, basis_points: int) -> int:
    """A share of an amount in basis points, rounded half up to the cent."""
    return (face_value_cents * basis_points + 5_000) // 10_000


async def quote(conn: AsyncConnection, order: Order, *, ceiling: tuple[int, int] | None = None) -> Quote:
    """What the order costs and what to warn about, from its lines and its programme's fee,
    against ``ceiling`` (year, cents): by default the one in force this year."""
    programme = await get_rules(conn, order.programme_id)
    lines = await get_lines(conn, order.id)
    face = sum(line.amount_cents for line in lines)
    fee = _fee(face, programme.purchase_fee_bp)
    vat = _fee(fee, VAT_RATE_BP)
    year, ceiling_cents = ceiling or await gift_ceiling(conn, datetime.now(timezone.utc).astimezone(PARIS).year)
    # The tolerance is per beneficiary per event: two lines for one person add up.
    per_person: dict[tuple[str, str], list[OrderLine]] = {}
    for line in lines:
        per_person.setdefault((line.beneficiary_name.casefold(), (line.beneficiary_email or "").casefold()), []).append(line)
    warnings = tuple(
        CeilingWarning(group[0].beneficiary_name, group[0].beneficiary_email, tuple(line.line_no for line in group),
                       sum(line.amount_cents for line in group), ceiling_cents)
        for group in per_person.values() if sum(line.amount_cents for line in group) > ceiling_cents
    )
    return Quote(len(lines), face, programme.purchase_fee_bp, fee, vat, face + fee + vat, year, ceiling_cents, warnings)


async def confirm(conn: AsyncConnection, order_id: int, *, actor: str) -> tuple[Order, Quote]:
    order = await get_order(conn, order_id, for_update=True)
    target = _require(order, "confirm")
    fixed = await quote(conn, order)
    if fixed.lines_count == 0:
        raise OrderEmpty(order_id=order_id)
    await conn.execute(
        text(
            "UPDATE voucher_orders SET status = :status, confirmed_at = now(), ceiling_year = :year, ceiling_cents = :ceiling, "
            "lines_count = :n, face_value_cents = :face, fee_bp = :bp, fee_cents = :fee, fee_vat_cents = :vat, "
            "total_cents = :total WHERE id = :id"
        ),
        {"status": target, "year": fixed.ceiling_year, "ceiling": fixed.ceiling_cents, "n": fixed.lines_count,
         "face": fixed.face_value_cents, "bp": fixed.fee_bp, "fee": fixed.fee_cents, "vat": fixed.fee_vat_cents,
         "total": fixed.total_cents, "id": order_id},
    )
    await append(conn, event_type="voucher_order.confirmed",
                 payload={"order_id": order_id, "lines": fixed.lines_count, "face_value_cents": fixed.face_value_cents,
                          "fee_cents": fixed.fee_cents, "fee_vat_cents": fixed.fee_vat_cents,
                          "total_cents": fixed.total_cents, "ceiling_warnings": len(fixed.warnings)}, actor=actor)
    return await get_order(conn, order_id), fixed


async def fixed_quote(conn: AsyncConnection, order: Order) -> Quote:
    """The quote as fixed at confirmation (its warnings recomputed from the lines, which cannot
    have changed since, against the ceiling fixed with it)."""
    row = (await conn.execute(
        text("SELECT lines_count, face_value_cents, fee_bp, fee_cents, fee_vat_cents, total_cents, ceiling_year, "
             "ceiling_cents FROM voucher_orders WHERE id = :id"), {"id": order.id},
    )).one()
    if row.total_cents is None:
        return await quote(conn, order)
    warnings = (await quote(conn, order, ceiling=(row.ceiling_year, row.ceiling_cents))).warnings
    return Quote(row.lines_count, row.face_value_cents, row.fee_bp, row.fee_cents, row.fee_vat_cents, row.total_cents,
                 row.ceiling_year, row.ceiling_cents, warnings)


async def _programme_account(conn: AsyncConnection, programme: ProgrammeRules, kind: AccountKind) -> int:
    """The programme's own euro account of a kind (purchase fees, VAT on them), opened on first use.
    The caller holds the programme row locked, so two payments cannot both open one."""
    found = await conn.scalar(
        text("SELECT id FROM accounts WHERE owner_type = 'programme' AND owner_id = :id AND kind = :kind AND unit = :unit "
             "ORDER BY id LIMIT 1"),
        {"id": str(programme.id), "kind": str(kind), "unit": RESERVE_UNIT},
    )
    return found or await open_account(conn, kind=kind, unit=RESERVE_UNIT, owner_type="programme", owner_id=programme.id)


async def record_payment(
    conn: AsyncConnection, order_id: int, *, amount_cents: int, reference: str, actor: str
) -> Order:
    """The bank transfer for a confirmed order arrived: one ledger transfer books it."""
    order = await get_order(conn, order_id, for_update=True)
    target = _require(order, "pay")
    reference = reference.strip()
    if not 1 <= len(reference) <= PAYMENT_REFERENCE_LENGTH_MAX:
        raise InvalidInput(f"a payment reference has 1 to {PAYMENT_REFERENCE_LENGTH_MAX} characters",
                           message_fr=f"une référence de paiement fait 1 à {PAYMENT_REFERENCE_LENGTH_MAX} caractères")
    fixed = await fixed_quote(conn, order)
    if amount_cents != fixed.total_cents:
        raise PaymentMismatch(order_id=order_id, expected_cents=fixed.total_cents, paid_cents=amount_cents)
    programme = await get_rules(conn, order.programme_id, for_update=True)
    clearing = await open_account(conn, kind=AccountKind.CLEARING, unit=programme.unit, owner_type="voucher_order",
                                  owner_id=order_id, floor_cents=0)
    face = fixed.face_value_cents
    postings = [Posting(programme.bank_account_id, -fixed.total_cents), Posting(programme.reserve_account_id, face),
                Posting(programme.float_account_id, -face), Posting(clearing, face)]
    if fixed.fee_cents:
        postings.append(Posting(await _programme_account(conn, programme, AccountKind.FEE_INCOME), fixed.fee_cents))
    if fixed.fee_vat_cents:
        postings.append(Posting(await _programme_account(conn, programme, AccountKind.VAT_PAYABLE), fixed.fee_vat_cents))
    result = await transfer(conn, key=f"voucher-order-{order_id}-payment", kind="voucher.order_payment", postings=postings,
                            metadata={"order_id": order_id, "employer_id": order.employer_id, "reference": reference})
    await conn.execute(
        text("UPDATE voucher_orders SET status = :status, paid_at = now(), payment_reference = :reference, "
             "payment_transfer_id = :transfer_id WHERE id = :id"),
        {"status": target, "reference": reference, "transfer_id": result.transfer_id, "id": order_id},
    )
    await append(conn, event_type="voucher_order.paid",
                 payload={"order_id": order_id, "amount_cents": amount_cents, "reference": reference,
                          "transfer_id": result.transfer_id}, actor=actor)
    return await get_order(conn, order_id)


async def issue(conn: AsyncConnection, order_id: int, *, actor: str) -> tuple[Order, list[Voucher]]:
    """Issue a paid order: one voucher per line, all funded in ONE ledger transfer from the
    order's clearing account, attributed to the employer, each with its expiry."""
    order = await get_order(conn, order_id, for_update=True)
    target = _require(order, "issue")
    programme = await get_rules(conn, order.programme_id)
    lines = await get_lines(conn, order_id)
    clearing = await conn.scalar(
        text("SELECT id FROM accounts WHERE owner_type = 'voucher_order' AND owner_id = :id AND kind = 'clearing'"),
        {"id": str(order_id)},
    )
    face = sum(line.amount_cents for line in lines)
    vouchers = await issue_vouchers(
        conn, programme=programme, key=f"voucher-order-{order_id}-issue", kind="voucher.issue", actor=actor,
        lines=[VoucherLine(line.amount_cents, line.beneficiary_name, line.beneficiary_email, line.id) for line in lines],
        source=[Posting(clearing, -face)], employer_id=order.employer_id, order_id=order_id,
        # The quote was checked against the rules in force when it was confirmed and paid for.
        check_limits=False,
    )
    await conn.execute(
        text("UPDATE voucher_orders SET status = :status, issued_at = now(), issue_transfer_id = :transfer_id WHERE id = :id"),
        {"status": target, "transfer_id": vouchers[0].issue_transfer_id, "id": order_id},
    )
    await append(conn, event_type="voucher_order.issued",
                 payload={"order_id": order_id, "vouchers": len(vouchers), "face_value_cents": face,
                          "transfer_id": vouchers[0].issue_transfer_id}, actor=actor)
    return await get_order(conn, order_id), vouchers


async def cancel(conn: AsyncConnection, order_id: int, *, reason: str, actor: str) -> Order:
    """Cancel an order not yet issued; a paid one has its payment reversed (refunded)."""
    order = await get_order(conn, order_id, for_update=True)
    target = _require(order, "cancel")
    reason = reason.strip()
    if not 1 <= len(reason) <= 500:
        raise InvalidInput("give a reason (1 to 500 characters)", message_fr="indiquez un motif (1 à 500 caractères)")
    refund_id = None
    if order.payment_transfer_id is not None:
        refund_id = (await reverse(conn, key=f"voucher-order-{order_id}-refund", transfer_id=order.payment_transfer_id,
                                   metadata={"order_id": order_id, "reason": reason})).transfer_id
    await conn.execute(text("UPDATE voucher_orders SET status = :status, cancelled_at = now() WHERE id = :id"),
                       {"status": target, "id": order_id})
    await append(conn, event_type="voucher_order.cancelled",
                 payload={"order_id": order_id, "from": order.status, "reason": reason, "refund_transfer_id": refund_id},
                 actor=actor)
    return await get_order(conn, order_id)


def format_money(amount_cents: int, unit: str, language: str = "fr") -> str:
    """An amount as a person reads it: "1 234,50 €" in French, "1,234.50 €" in English."""
    whole, cents = divmod(abs(amount_cents), 100)
    sign = "-" if amount_cents < 0 else ""
    if language == "en":
        number = f"{sign}{whole:,}.{cents:02d}"
    else:
        number = f"{sign}{whole:,}".replace(",", "\u202f") + f",{cents:02d}"
    return f"{number} €" if unit == "EUR" else f"{number} {unit}"


def quote_as_dict(fixed: Quote) -> dict[str, Any]:
    return {
        "lines_count": fixed.lines_count, "face_value_cents": fixed.face_value_cents, "fee_bp": fixed.fee_bp,
        "fee_cents": fixed.fee_cents, "fee_vat_cents": fixed.fee_vat_cents, "total_cents": fixed.total_cents,
        "urssaf_ceiling": {"year": fixed.ceiling_year, "per_beneficiary_per_event_cents": fixed.ceiling_cents},
        "warnings": [
            {"code": "above_urssaf_ceiling", "beneficiary_name": w.beneficiary_name, "line_nos": list(w.line_nos),
             "amount_cents": w.amount_cents, "ceiling_cents": w.ceiling_cents,
             "message": f"{w.beneficiary_name} receives {format_money(w.amount_cents, 'EUR', 'en')} for this event, "
                        f"above the {format_money(w.ceiling_cents, 'EUR', 'en')} URSSAF tolerance: the whole gift becomes "
                        "subject to social contributions.",
             "message_fr": f"{w.beneficiary_name} reçoit {format_money(w.amount_cents, 'EUR')} pour cet événement, au-delà "
                           f"de la tolérance URSSAF de {format_money(w.ceiling_cents, 'EUR')} : la totalité du cadeau "
                           "devient soumise à cotisations sociales."}
            for w in fixed.warnings
        ],
    }

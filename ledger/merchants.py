"""Merchants: applications, the operator's review, and the merchant's ledger accounts.

A merchant applies (identity checked: SIRET, IBAN, category from its issuer's list, NAF
code); the operator approves it per programme, rejects it with a reason, suspends and
reinstates it. Each step is one audit event written in the transaction that makes it.
Approval opens the merchant's ledger account in each unit it is paid in.

This module never moves value and never speaks HTTP; people and passwords are the API's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from stdnum.exceptions import ValidationError as StdnumError
from stdnum.fr import siret as siret_number

from audit.chain import append
from ledger.accounts import AccountKind, open_account
from ledger.errors import DomainError, InvalidInput, NotFound
from ledger.programmes import acceptance, get_rules

NAME_LENGTH_MAX = 200
ADDRESS_LENGTH_MAX = 200
COMMUNE_LENGTH_MAX = 100
REASON_LENGTH_MAX = 500
PROGRAMMES_WANTED_MAX = 20
CATEGORY_LABEL_LENGTH_MAX = 100

_NAF = re.compile(r"^([0-9]{2})\.?([0-9]{2})([A-Za-z])$")
_CATEGORY = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
_POSTCODE = re.compile(r"^[0-9]{5}$")
_INSEE = re.compile(r"^[0-9][0-9AB][0-9]{3}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{2,}$")
_PHONE = re.compile(r"^\+?[0-9]{6,15}$")
# Countries whose banks take SEPA credit transfers (settlement pays merchants that way).
_SEPA_COUNTRIES = (
    "AD", "AT", "BE", "BG", "CH", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GB", "GI", "GR",
    "HR", "HU", "IE", "IS", "IT", "LI", "LT", "LU", "LV", "MC", "MT", "NL", "NO", "PL", "PT", "RO",
    "SE", "SI", "SK", "SM", "VA",
)

STATUSES = ("applied", "approved", "rejected", "suspended")


class MerchantNotFound(NotFound):
    code = "merchant_not_found"
    message = "No merchant has this id."
    message_fr = "Aucun commerçant ne correspond."


class InvalidApplication(InvalidInput):
    """One or more fields of an application are wrong; ``details['fields']`` names each."""

    code = "invalid_application"
    message = "Some fields of the application are not valid."
    message_fr = "Certains champs de la demande ne sont pas valides."


class SiretTaken(DomainError):
    code = "siret_taken"
    message = "A merchant with this SIRET already exists for this issuer."
    message_fr = "Un commerçant avec ce SIRET existe déjà pour cet émetteur."


class MerchantStatusConflict(DomainError):
    code = "merchant_status_conflict"
    message = "This step is not possible in the merchant's current status."
    message_fr = "Cette étape n'est pas possible dans l'état actuel du commerçant."


class ProgrammeRefusesMerchant(DomainError):
    code = "programme_refuses_merchant"
    message = "The programme's acceptance rules exclude this merchant."
    message_fr = "Les règles d'acceptation du programme excluent ce commerçant."


@dataclass(frozen=True, slots=True)
class Application:
    issuer_id: int
    legal_name: str
    trade_name: str
    siret: str
    iban: str
    category: str
    naf_code: str
    address_line: str
    postcode: str
    commune: str
    email: str
    phone: str
    programme_ids: tuple[int, ...]
    bic: str | None = None
    commune_insee: str | None = None


@dataclass(frozen=True, slots=True)
class Merchant:
    id: int
    issuer_id: int
    legal_name: str
    trade_name: str
    status: str
    status_reason: str | None
    siret: str | None
    iban: str | None
    bic: str | None
    category: str | None
    naf_code: str | None
    address_line: str | None
    postcode: str | None
    commune: str | None
    commune_insee: str | None
    email: str | None
    phone: str | None
    is_counter: bool
    created_at: datetime
    reviewed_at: datetime | None
    programmes: tuple[ProgrammeStatus, ...]


@dataclass(frozen=True, slots=True)
class ProgrammeStatus:
    programme_id: int
    name: str
    unit: str
    status: str  # requested, approved, refused
    reason: str | None


@dataclass(frozen=True, slots=True)
class Category:
    code: str
    label_fr: str
    label_en: str


def _text(fields: dict[str, str], name: str, value: str, length_max: int) -> str:
    value = " ".join((value or "").split())
    if not 1 <= len(value) <= length_max:
        fields[name] = f"required, at most {length_max} characters"
    return value


def normalise(application: Application) -> Application:
    """The application with every field checked and written in its canonical form.

    Raises InvalidApplication naming every wrong field at once, so a form shows them all.
    """
    fields: dict[str, str] = {}
    legal_name = _text(fields, "legal_name", application.legal_name, NAME_LENGTH_MAX)
    trade_name = _text(fields, "trade_name", application.trade_name, NAME_LENGTH_MAX)
    address_line = _text(fields, "address_line", application.address_line, ADDRESS_LENGTH_MAX)
    commune = _text(fields, "commune", application.commune, COMMUNE_LENGTH_MAX)
    siret = ""
    try:
        siret = siret_number.validate(application.siret or "")
    except StdnumError as error:
        fields["siret"] = f"not a valid SIRET: {error}"
    iban = bic = ""
    try:
        parsed = IBAN(application.iban or "")
        iban = parsed.compact
        if parsed.country_code not in _SEPA_COUNTRIES:
            fields["iban"] = "the account must be in the SEPA area"
        # Without a BIC given, the bank registry usually knows it from the IBAN.
        bic = str(parsed.bic) if parsed.bic else ""
    except SchwiftyException as error:
        fields["iban"] = f"not a valid IBAN: {error}"
    if application.bic:
        try:
            bic = str(BIC(application.bic.replace(" ", "").upper()))
        except SchwiftyException as error:
            fields["bic"] = f"not a valid BIC: {error}"
    naf = _NAF.match((application.naf_code or "").strip())
    if not naf:
        fields["naf_code"] = "a NAF code looks like 47.61Z"
    if not _CATEGORY.match(application.category or ""):
        fields["category"] = "a category code from the issuer's list"
    postcode = (application.postcode or "").strip()
    if not _POSTCODE.match(postcode):
        fields["postcode"] = "five digits"
    insee = (application.commune_insee or "").strip().upper() or None
    if insee is not None and not _INSEE.match(insee):
        fields["commune_insee"] = "an INSEE commune code, five characters"
    email = (application.email or "").strip().lower()
    if not _EMAIL.match(email) or len(email) > 254:
        fields["email"] = "an email address"
    phone = re.sub(r"[\s.\-()]", "", application.phone or "")
    if not _PHONE.match(phone):
        fields["phone"] = "a phone number, digits with an optional leading +"
    programme_ids = tuple(dict.fromkeys(application.programme_ids))
    if not 1 <= len(programme_ids) <= PROGRAMMES_WANTED_MAX:
        fields["programme_ids"] = f"1 to {PROGRAMMES_WANTED_MAX} programmes"
    if fields:
        raise InvalidApplication(fields=fields)
    return Application(
        issuer_id=application.issuer_id, legal_name=legal_name, trade_name=trade_name, siret=siret,
        iban=iban, bic=bic or None, category=application.category, naf_code=f"{naf[1]}.{naf[2]}{naf[3].upper()}",
        address_line=address_line, postcode=postcode, commune=commune, commune_insee=insee,
        email=email, phone=phone, programme_ids=programme_ids,
    )


async def add_category(
    conn: AsyncConnection, *, issuer_id: int, code: str, label_fr: str, label_en: str, actor: str
) -> Category:
    if not _CATEGORY.match(code or ""):
        raise InvalidInput("a category code is 2 to 40 lowercase letters, digits or '_'", code=code)
    labels = {"label_fr": label_fr.strip(), "label_en": label_en.strip()}
    for name, label in labels.items():
        if not 1 <= len(label) <= CATEGORY_LABEL_LENGTH_MAX:
            raise InvalidInput(f"{name} has 1 to {CATEGORY_LABEL_LENGTH_MAX} characters")
    await conn.execute(
        text(
            """
            INSERT INTO merchant_categories (issuer_id, code, label_fr, label_en)
            VALUES (:issuer_id, :code, :label_fr, :label_en)
            ON CONFLICT (issuer_id, code) DO UPDATE SET label_fr = excluded.label_fr, label_en = excluded.label_en
            """
        ),
        {"issuer_id": issuer_id, "code": code, **labels},
    )
    await append(conn, event_type="merchant.category_set", actor=actor,
                 payload={"issuer_id": issuer_id, "code": code, **labels})
    return Category(code, labels["label_fr"], labels["label_en"])


async def list_categories(conn: AsyncConnection, issuer_id: int) -> list[Category]:
    rows = await conn.execute(
        text("SELECT code, label_fr, label_en FROM merchant_categories WHERE issuer_id = :id ORDER BY code"),
        {"id": issuer_id},
    )
    return [Category(*row) for row in rows]


async def apply(conn: AsyncConnection, application: Application, *, actor: str) -> int:
    """Record an application (status ``applied``) and the programmes it asks for."""
    application = normalise(application)
    known = await conn.scalar(
        text("SELECT count(*) FROM merchant_categories WHERE issuer_id = :issuer_id AND code = :code"),
        {"issuer_id": application.issuer_id, "code": application.category},
    )
    if not known:
        raise InvalidApplication(fields={"category": "not in this issuer's list of categories"})
    programmes = (
        await conn.execute(
            text("SELECT id FROM programmes WHERE issuer_id = :issuer_id AND id = ANY(:ids)"),
            {"issuer_id": application.issuer_id, "ids": list(application.programme_ids)},
        )
    ).scalars().all()
    if len(programmes) != len(application.programme_ids):
        raise InvalidApplication(fields={"programme_ids": "every programme must be one of this issuer's"})
    taken = await conn.scalar(
        text("SELECT id FROM merchants WHERE issuer_id = :issuer_id AND siret = :siret"),
        {"issuer_id": application.issuer_id, "siret": application.siret},
    )
    if taken:
        raise SiretTaken(merchant_id=taken)
    values = asdict(application)
    values.pop("programme_ids")
    merchant_id = (
        await conn.execute(
            text(
                """
                INSERT INTO merchants (issuer_id, legal_name, trade_name, status, siret, iban, bic,
                    category, naf_code, address_line, postcode, commune, commune_insee, email, phone)
                VALUES (:issuer_id, :legal_name, :trade_name, 'applied', :siret, :iban, :bic,
                    :category, :naf_code, :address_line, :postcode, :commune, :commune_insee, :email, :phone)
                RETURNING id
                """
            ),
            values,
        )
    ).scalar_one()
    await conn.execute(
        text(
            "INSERT INTO merchant_programmes (merchant_id, programme_id) "
            "SELECT :merchant_id, unnest(CAST(:ids AS bigint[]))"
        ),
        {"merchant_id": merchant_id, "ids": list(application.programme_ids)},
    )
    await append(conn, event_type="merchant.applied", actor=actor, payload={
        "merchant_id": merchant_id, **values, "programme_ids": list(application.programme_ids),
    })
    return merchant_id


_MERCHANT_SQL = text(
    """
    SELECT id, issuer_id, legal_name, trade_name, status, status_reason, siret, iban, bic, category,
           naf_code, address_line, postcode, commune, commune_insee, email, phone, is_counter,
           created_at, reviewed_at
    FROM merchants WHERE id = :id
    """
)


async def get_merchant(conn: AsyncConnection, merchant_id: int) -> Merchant:
    row = (await conn.execute(_MERCHANT_SQL, {"id": merchant_id})).one_or_none()
    if row is None:
        raise MerchantNotFound(merchant_id=merchant_id)
    programmes = await conn.execute(
        text(
            """
            SELECT mp.programme_id, p.name, p.unit, mp.status, mp.reason
            FROM merchant_programmes mp JOIN programmes p ON p.id = mp.programme_id
            WHERE mp.merchant_id = :id ORDER BY mp.programme_id
            """
        ),
        {"id": merchant_id},
    )
    return Merchant(*row, programmes=tuple(ProgrammeStatus(*p) for p in programmes))


async def list_merchants(
    conn: AsyncConnection, *, issuer_id: int | None = None, status: str | None = None, limit: int = 100,
    after_id: int = 0,
) -> list[Merchant]:
    ids = (
        await conn.execute(
            text(
                """
                SELECT id FROM merchants
                WHERE (CAST(:issuer_id AS bigint) IS NULL OR issuer_id = :issuer_id)
                  AND (CAST(:status AS text) IS NULL OR status = :status) AND id > :after_id
                ORDER BY id LIMIT :limit
                """
            ),
            {"issuer_id": issuer_id, "status": status, "after_id": after_id, "limit": limit},
        )
    ).scalars().all()
    return [await get_merchant(conn, merchant_id) for merchant_id in ids]


async def _locked(conn: AsyncConnection, merchant_id: int) -> Any:
    row = (
        await conn.execute(
            text("SELECT id, issuer_id, status, category FROM merchants WHERE id = :id FOR UPDATE"),
            {"id": merchant_id},
        )
    ).one_or_none()
    if row is None:
        raise MerchantNotFound(merchant_id=merchant_id)
    return row


def _reason(reason: str | None, *, required: bool) -> str | None:
    reason = " ".join((reason or "").split()) or None
    if required and reason is None:
        raise InvalidInput("give a reason", message_fr="Indiquez un motif.")
    if reason is not None and len(reason) > REASON_LENGTH_MAX:
        raise InvalidInput(f"a reason has at most {REASON_LENGTH_MAX} characters")
    return reason


async def merchant_account(conn: AsyncConnection, merchant_id: int, unit: str) -> int | None:
    """The merchant's ledger account in ``unit``, if one was opened."""
    return await conn.scalar(
        text(
            "SELECT id FROM accounts WHERE owner_type = 'merchant' AND owner_id = :owner "
            "AND kind = 'merchant' AND unit = :unit ORDER BY id LIMIT 1"
        ),
        {"owner": str(merchant_id), "unit": unit},
    )


async def ensure_merchant_account(conn: AsyncConnection, merchant_id: int, unit: str) -> int:
    """Open the merchant's account in ``unit`` unless it exists (caller holds the merchant row lock)."""
    existing = await merchant_account(conn, merchant_id, unit)
    if existing is not None:
        return existing
    return await open_account(conn, kind=AccountKind.MERCHANT, unit=unit, owner_type="merchant", owner_id=merchant_id)


async def approve(
    conn: AsyncConnection, merchant_id: int, programme_ids: Sequence[int], *, actor: str,
) -> dict[int, int]:
    """Approve the merchant for these programmes (a first approval also approves the
    merchant); opens its ledger accounts. Returns {programme id: merchant account id}."""
    merchant = await _locked(conn, merchant_id)
    if merchant.status not in ("applied", "approved"):
        raise MerchantStatusConflict(current_status=merchant.status, wanted="approved")
    wanted = list(dict.fromkeys(programme_ids))
    if not 1 <= len(wanted) <= PROGRAMMES_WANTED_MAX:
        raise InvalidInput(f"approve 1 to {PROGRAMMES_WANTED_MAX} programmes at once")
    programmes = (
        await conn.execute(
            text("SELECT id, unit FROM programmes WHERE issuer_id = :issuer_id AND id = ANY(:ids) ORDER BY id"),
            {"issuer_id": merchant.issuer_id, "ids": wanted},
        )
    ).all()
    if len(programmes) != len(wanted):
        raise InvalidInput("every programme must be one of the merchant's issuer's", programme_ids=wanted)
    for programme in programmes:
        refusal = await programme_refusal(conn, programme.id, merchant.category, merchant_id)
        if refusal is not None:
            raise ProgrammeRefusesMerchant(programme_id=programme.id, rule=refusal)
    accounts: dict[int, int] = {}
    for programme in programmes:
        accounts[programme.id] = await ensure_merchant_account(conn, merchant_id, programme.unit)
    await conn.execute(
        text(
            """
            INSERT INTO merchant_programmes (merchant_id, programme_id, status, decided_at)
            SELECT :merchant_id, unnest(CAST(:ids AS bigint[])), 'approved', now()
            ON CONFLICT (merchant_id, programme_id)
            DO UPDATE SET status = 'approved', reason = NULL, decided_at = now()
            """
        ),
        {"merchant_id": merchant_id, "ids": [p.id for p in programmes]},
    )
    await conn.execute(
        text("UPDATE merchants SET status = 'approved', status_reason = NULL, reviewed_at = now() WHERE id = :id"),
        {"id": merchant_id},
    )
    await append(conn, event_type="merchant.approved", actor=actor, payload={
        "merchant_id": merchant_id, "previous_status": merchant.status,
        "programmes": [{"programme_id": p.id, "account_id": accounts[p.id]} for p in programmes],
    })
    return accounts


async def programme_refusal(conn: AsyncConnection, programme_id: int, category: str | None, merchant_id: int) -> str | None:
    """Why the programme's acceptance rules refuse this merchant, or None."""
    return acceptance(await get_rules(conn, programme_id), category, merchant_id)


async def refuse_programme(
    conn: AsyncConnection, merchant_id: int, programme_id: int, *, reason: str, actor: str
) -> None:
    """Refuse one programme the merchant asked for (it keeps the others)."""
    reason = _reason(reason, required=True)
    await _locked(conn, merchant_id)
    updated = await conn.execute(
        text(
            "UPDATE merchant_programmes SET status = 'refused', reason = :reason, decided_at = now() "
            "WHERE merchant_id = :merchant_id AND programme_id = :programme_id"
        ),
        {"merchant_id": merchant_id, "programme_id": programme_id, "reason": reason},
    )
    if updated.rowcount != 1:
        raise NotFound("the merchant did not ask for this programme", programme_id=programme_id)
    await append(conn, event_type="merchant.programme_refused", actor=actor, payload={
        "merchant_id": merchant_id, "programme_id": programme_id, "reason": reason,
    })


# status now -> (statuses it may come from, whether a reason is required)
_TRANSITIONS = {
    "rejected": (("applied",), True),
    "suspended": (("approved",), True),
    "approved": (("suspended",), False),  # reinstated
}
_EVENTS = {"rejected": "merchant.rejected", "suspended": "merchant.suspended", "approved": "merchant.reinstated"}


async def _move(conn: AsyncConnection, merchant_id: int, status: str, reason: str | None, actor: str) -> None:
    sources, reason_required = _TRANSITIONS[status]
    reason = _reason(reason, required=reason_required)
    merchant = await _locked(conn, merchant_id)
    if merchant.status not in sources:
        raise MerchantStatusConflict(current_status=merchant.status, wanted=status)
    await conn.execute(
        text("UPDATE merchants SET status = :status, status_reason = :reason, reviewed_at = now() WHERE id = :id"),
        {"id": merchant_id, "status": status, "reason": reason},
    )
    await append(conn, event_type=_EVENTS[status], actor=actor, payload={
        "merchant_id": merchant_id, "previous_status": merchant.status, "reason": reason,
    })


async def reject(conn: AsyncConnection, merchant_id: int, *, reason: str, actor: str) -> None:
    await _move(conn, merchant_id, "rejected", reason, actor)


async def suspend(conn: AsyncConnection, merchant_id: int, *, reason: str, actor: str) -> None:
    await _move(conn, merchant_id, "suspended", reason, actor)


async def reinstate(conn: AsyncConnection, merchant_id: int, *, reason: str | None, actor: str) -> None:
    await _move(conn, merchant_id, "approved", reason, actor)


class MerchantSuspended(DomainError):
    code = "merchant_suspended"
    message = "This shop is suspended by the scheme: it cannot take or refund vouchers for now."
    message_fr = "Ce commerce est suspendu par le réseau : il ne peut ni encaisser ni rembourser pour le moment."


class MerchantNotApproved(DomainError):
    code = "merchant_not_approved"
    message = "This shop is not approved yet (or was not approved): it cannot take vouchers."
    message_fr = "Ce commerce n'est pas (encore) agréé : il ne peut pas encaisser de titres."


def check_can_act(status: str) -> None:
    """Refuse any taking or refund unless the merchant is approved."""
    if status == "suspended":
        raise MerchantSuspended()
    if status != "approved":
        raise MerchantNotApproved(current_status=status)

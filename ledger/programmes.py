"""Programme rules: what a programme's vouchers are worth, how long they last, where they are
accepted, and how they read in two languages.

The rules are columns on ``programmes`` (migration 0003). :func:`acceptance` is the one place
that decides whether a merchant may take a programme's vouchers; the merchants capability calls
it at redemption. Changes to rules are audit events carrying the values before and after.
This module never moves value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from stdnum.exceptions import ValidationError
from stdnum.fr import siren as stdnum_siren

from audit.chain import append
from ledger.accounts import AccountKind, open_account
from ledger.errors import DomainError, InvalidInput, NotFound
from ledger.scheme import create_issuer as create_scheme_issuer
from ledger.scheme import create_programme as create_scheme_programme

PARIS = ZoneInfo("Europe/Paris")
KINDS = ("gift", "culture", "local_currency")
FACE_VALUE_CENTS_MAX = 100_000_000
VALIDITY_MONTHS_MAX = 120
CATEGORY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
CATEGORIES_MAX = 100
MERCHANT_LIST_MAX = 10_000
TEXT_LENGTH_MAX = 2_000
PURCHASE_FEE_BP_MAX = 5_000

# Refusal codes :func:`acceptance` returns.
MERCHANT_DENIED = "merchant_denied"
CATEGORY_EXCLUDED = "category_excluded"
CATEGORY_NOT_ALLOWED = "category_not_allowed"


class InvalidSiren(DomainError):
    code = "invalid_siren"
    message = "The SIREN is not a valid 9-digit French company number."
    message_fr = "Le SIREN n'est pas un numéro d'entreprise valide à 9 chiffres."


class InvalidProgrammeRules(DomainError):
    code = "invalid_programme_rules"
    message = "The programme's rules are not consistent."
    message_fr = "Les règles du programme ne sont pas cohérentes."


class NotAcceptedHere(DomainError):
    code = "not_accepted_here"
    message = "This programme's vouchers are not accepted at this merchant."
    message_fr = "Les titres de ce programme ne sont pas acceptés chez ce commerçant."


@dataclass(frozen=True, slots=True)
class ProgrammeRules:
    id: int
    issuer_id: int
    kind: str
    name: str
    unit: str
    float_account_id: int
    reserve_account_id: int
    bank_account_id: int
    breakage_account_id: int | None  # opened on first need: see breakage_account()
    face_value_min_cents: int
    face_value_max_cents: int
    validity_months: int | None
    valid_until: date | None
    partial_redemption: bool
    categories_allowed: tuple[str, ...] | None
    categories_excluded: tuple[str, ...]
    merchants_allowed: tuple[int, ...]
    merchants_denied: tuple[int, ...]
    second_language: str
    texts: dict[str, dict[str, str]]
    purchase_fee_bp: int

    def text_in(self, language: str, field: str) -> str:
        """A text in ``language``, falling back to French, then to the programme's name."""
        for lang in (language, "fr"):
            value = self.texts.get(lang, {}).get(field)
            if value:
                return value
        return self.name if field == "name" else ""

    def expiry_for(self, issued_at: datetime) -> datetime:
        """When a voucher issued at ``issued_at`` stops being valid: the end of its last day in
        Paris (N months after issue, or the programme's fixed end date), as a UTC instant."""
        if self.valid_until is not None:
            last_day = self.valid_until
        else:
            assert self.validity_months is not None
            local = issued_at.astimezone(PARIS).date()
            month_index = local.month - 1 + self.validity_months
            year, month = local.year + month_index // 12, month_index % 12 + 1
            last_day = _clamped_date(year, month, local.day)
        return datetime.combine(last_day + timedelta(days=1), time(), PARIS).astimezone(timezone.utc)


def _clamped_date(year: int, month: int, day: int) -> date:
    while True:
        try:
            return date(year, month, day)
        except ValueError:
            day -= 1


def acceptance(programme: ProgrammeRules, category: str | None, merchant_id: int) -> str | None:
    """None if ``programme`` accepts a merchant of ``category``; else the refusal code.

    Order of precedence: an explicitly denied merchant is refused; an explicitly allowed one is
    accepted; then an excluded category is refused; then, if the programme lists allowed
    categories, a merchant outside them (or with no category) is refused.
    """
    if merchant_id in programme.merchants_denied:
        return MERCHANT_DENIED
    if merchant_id in programme.merchants_allowed:
        return None
    if category is not None and category in programme.categories_excluded:
        return CATEGORY_EXCLUDED
    if programme.categories_allowed is not None and category not in programme.categories_allowed:
        return CATEGORY_NOT_ALLOWED
    return None


def check_acceptance(programme: ProgrammeRules, category: str | None, merchant_id: int) -> None:
    """:func:`acceptance` as a typed refusal (``not_accepted_here`` with the reason)."""
    reason = acceptance(programme, category, merchant_id)
    if reason is not None:
        raise NotAcceptedHere(reason=reason, programme_id=programme.id, merchant_id=merchant_id)


def validate_siren(value: str) -> str:
    try:
        return stdnum_siren.validate(value)
    except ValidationError:
        raise InvalidSiren(siren=value) from None


async def create_issuer(conn: AsyncConnection, *, name: str, siren: str, actor: str) -> int:
    siren = validate_siren(siren)
    if not 1 <= len(name.strip()) <= 200:
        raise InvalidInput("an issuer's name has 1 to 200 characters", message_fr="Le nom de l'émetteur fait 1 à 200 caractères.")
    issuer_id = await create_scheme_issuer(conn, name=name.strip(), siren=siren)
    await append(conn, event_type="issuer.created", payload={"issuer_id": issuer_id, "name": name.strip(), "siren": siren},
                 actor=actor)
    return issuer_id


_COLUMNS = (
    "id, issuer_id, kind, name, unit, float_account_id, reserve_account_id, bank_account_id, "
    "breakage_account_id, face_value_min_cents, face_value_max_cents, validity_months, valid_until, "
    "partial_redemption, categories_allowed, categories_excluded, merchants_allowed, merchants_denied, "
    "second_language, texts, purchase_fee_bp"
)

# What an operator may set, in the order of the columns.
RULE_FIELDS = (
    "name", "face_value_min_cents", "face_value_max_cents", "validity_months", "valid_until",
    "partial_redemption", "categories_allowed", "categories_excluded", "merchants_allowed",
    "merchants_denied", "second_language", "texts", "purchase_fee_bp",
)


# The rules' column names, in order: a caller that reads them inside a larger statement
# (``p.<column>``) builds the rules with :func:`rules_from_values`.
RULE_COLUMNS = tuple(_COLUMNS.split(", "))


def rules_from_values(values: Sequence[Any]) -> ProgrammeRules:
    return _rules_of(dict(zip(RULE_COLUMNS, values, strict=True)))


def _rules(row: Any) -> ProgrammeRules:
    return _rules_of(dict(row._mapping))


def _rules_of(values: dict[str, Any]) -> ProgrammeRules:
    values["categories_allowed"] = None if values["categories_allowed"] is None else tuple(values["categories_allowed"])
    for name in ("categories_excluded", "merchants_allowed", "merchants_denied"):
        values[name] = tuple(values[name])
    return ProgrammeRules(**values)


async def get_rules(conn: AsyncConnection, programme_id: int, *, for_update: bool = False) -> ProgrammeRules:
    row = (await conn.execute(
        text(f"SELECT {_COLUMNS} FROM programmes WHERE id = :id" + (" FOR UPDATE" if for_update else "")),
        {"id": programme_id},
    )).one_or_none()
    if row is None:
        raise NotFound("no programme has this id", message_fr="Aucun programme ne porte ce numéro.", programme_id=programme_id)
    return _rules(row)


async def list_rules(conn: AsyncConnection, *, issuer_id: int | None = None) -> list[ProgrammeRules]:
    rows = (await conn.execute(
        text(f"SELECT {_COLUMNS} FROM programmes WHERE CAST(:issuer_id AS bigint) IS NULL OR issuer_id = :issuer_id ORDER BY id"),
        {"issuer_id": issuer_id},
    )).all()
    return [_rules(row) for row in rows]


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """The rules normalised, or a refusal naming the first inconsistent field."""

    def refuse(field: str, why: str, why_fr: str) -> InvalidProgrammeRules:
        return InvalidProgrammeRules(f"{field}: {why}", message_fr=f"{field} : {why_fr}", field=field)

    name = (values.get("name") or "").strip()
    if not 1 <= len(name) <= 200:
        raise refuse("name", "1 to 200 characters", "1 à 200 caractères")
    low, high = values["face_value_min_cents"], values["face_value_max_cents"]
    if not (isinstance(low, int) and isinstance(high, int) and 0 < low <= high <= FACE_VALUE_CENTS_MAX):
        raise refuse("face_value_max_cents", f"limits must satisfy 0 < min <= max <= {FACE_VALUE_CENTS_MAX}",
                     f"les bornes vérifient 0 < min <= max <= {FACE_VALUE_CENTS_MAX}")
    months, until = values.get("validity_months"), values.get("valid_until")
    if (months is None) == (until is None):
        raise refuse("validity_months", "give either a validity in months or a fixed end date",
                     "indiquez soit une durée en mois, soit une date de fin")
    if months is not None and not 1 <= months <= VALIDITY_MONTHS_MAX:
        raise refuse("validity_months", f"1 to {VALIDITY_MONTHS_MAX} months", f"1 à {VALIDITY_MONTHS_MAX} mois")
    if until is not None and until <= datetime.now(PARIS).date():
        raise refuse("valid_until", "the end date must be in the future", "la date de fin doit être future")
    allowed = values.get("categories_allowed")
    for field in ("categories_allowed", "categories_excluded"):
        categories = values.get(field) or ()
        if len(categories) > CATEGORIES_MAX or any(not CATEGORY_PATTERN.match(c) for c in categories):
            raise refuse(field, "categories are lowercase codes (letters, digits, _ . -), at most 100",
                         "les catégories sont des codes en minuscules, 100 au plus")
    if allowed is not None and set(allowed) & set(values.get("categories_excluded") or ()):
        raise refuse("categories_excluded", "a category cannot be both allowed and excluded",
                     "une catégorie ne peut être à la fois admise et exclue")
    for field in ("merchants_allowed", "merchants_denied"):
        ids = values.get(field) or ()
        if len(ids) > MERCHANT_LIST_MAX or any(not isinstance(i, int) or i <= 0 for i in ids):
            raise refuse(field, "merchant ids are positive integers", "les identifiants de commerçants sont des entiers positifs")
    if set(values.get("merchants_allowed") or ()) & set(values.get("merchants_denied") or ()):
        raise refuse("merchants_denied", "a merchant cannot be both allowed and denied",
                     "un commerçant ne peut être à la fois admis et refusé")
    language = values.get("second_language") or "en"
    if not re.fullmatch(r"[a-z]{2,3}", language) or language == "fr":
        raise refuse("second_language", "an ISO 639 code other than fr (en, eu, oc, br…)",
                     "un code ISO 639 autre que fr (en, eu, oc, br…)")
    texts = values.get("texts") or {}
    if not isinstance(texts, dict) or any(
        lang not in ("fr", language) or not isinstance(entry, dict)
        or any(not isinstance(v, str) or len(v) > TEXT_LENGTH_MAX or k not in ("name", "description", "terms")
               for k, v in entry.items())
        for lang, entry in texts.items()
    ):
        raise refuse("texts", f"texts are {{'fr'|'{language}': {{name, description, terms}}}}, each at most {TEXT_LENGTH_MAX} characters",
                     f"les textes sont {{'fr'|'{language}': {{name, description, terms}}}}, {TEXT_LENGTH_MAX} caractères au plus")
    fee = values.get("purchase_fee_bp", 0)
    if not isinstance(fee, int) or not 0 <= fee <= PURCHASE_FEE_BP_MAX:
        raise refuse("purchase_fee_bp", f"0 to {PURCHASE_FEE_BP_MAX} basis points", f"0 à {PURCHASE_FEE_BP_MAX} points de base")
    return {
        "name": name, "face_value_min_cents": low, "face_value_max_cents": high,
        "validity_months": months, "valid_until": until,
        "partial_redemption": bool(values.get("partial_redemption", True)),
        "categories_allowed": None if allowed is None else sorted(set(allowed)),
        "categories_excluded": sorted(set(values.get("categories_excluded") or ())),
        "merchants_allowed": sorted(set(values.get("merchants_allowed") or ())),
        "merchants_denied": sorted(set(values.get("merchants_denied") or ())),
        "second_language": language, "texts": texts, "purchase_fee_bp": fee,
    }


_DEFAULTS: dict[str, Any] = {
    "face_value_min_cents": 100, "face_value_max_cents": 50_000, "validity_months": 12, "valid_until": None,
    "partial_redemption": True, "categories_allowed": None, "categories_excluded": (), "merchants_allowed": (),
    "merchants_denied": (), "second_language": "en", "texts": {}, "purchase_fee_bp": 0,
}


async def _write_rules(conn: AsyncConnection, programme_id: int, rules: dict[str, Any]) -> None:
    await conn.execute(
        text(
            """
            UPDATE programmes SET
                name = :name, face_value_min_cents = :face_value_min_cents,
                face_value_max_cents = :face_value_max_cents, validity_months = :validity_months,
                valid_until = :valid_until, partial_redemption = :partial_redemption,
                categories_allowed = CAST(:categories_allowed AS text[]),
                categories_excluded = CAST(:categories_excluded AS text[]),
                merchants_allowed = CAST(:merchants_allowed AS bigint[]),
                merchants_denied = CAST(:merchants_denied AS bigint[]),
                second_language = :second_language, texts = CAST(:texts AS jsonb),
                purchase_fee_bp = :purchase_fee_bp, updated_at = now()
            WHERE id = :id
            """
        ),
        {**rules, "texts": json.dumps(rules["texts"], ensure_ascii=False), "id": programme_id},
    )


async def breakage_account(conn: AsyncConnection, programme_id: int) -> int:
    """The programme's breakage account (expired value), opened on first need under the
    programme's row lock so two callers cannot open two."""
    found = await conn.scalar(text("SELECT breakage_account_id FROM programmes WHERE id = :id FOR UPDATE"),
                              {"id": programme_id})
    if found is not None:
        return found
    unit = await conn.scalar(text("SELECT unit FROM programmes WHERE id = :id"), {"id": programme_id})
    if unit is None:
        raise NotFound("no programme has this id", message_fr="Aucun programme ne porte ce numéro.", programme_id=programme_id)
    account_id = await open_account(conn, kind=AccountKind.BREAKAGE, unit=unit, owner_type="programme",
                                    owner_id=programme_id)
    await conn.execute(text("UPDATE programmes SET breakage_account_id = :a WHERE id = :id"),
                       {"a": account_id, "id": programme_id})
    return account_id


def _audit_view(rules: ProgrammeRules) -> dict[str, Any]:
    view = {f.name: getattr(rules, f.name) for f in fields(rules) if f.name in RULE_FIELDS}
    view["valid_until"] = rules.valid_until.isoformat() if rules.valid_until else None
    for name in ("categories_allowed", "categories_excluded", "merchants_allowed", "merchants_denied"):
        view[name] = None if view[name] is None else list(view[name])
    return view


async def create_programme(
    conn: AsyncConnection, *, issuer_id: int, kind: str, unit: str, actor: str, **rules: Any
) -> ProgrammeRules:
    """A programme with its ledger accounts and rules (missing rules take the defaults)."""
    if kind not in KINDS:
        raise InvalidProgrammeRules(f"kind: one of {', '.join(KINDS)}", message_fr=f"kind : {', '.join(KINDS)}", field="kind")
    unknown = set(rules) - set(RULE_FIELDS)
    if unknown:
        raise InvalidProgrammeRules(f"unknown rules: {sorted(unknown)}", field=sorted(unknown)[0])
    checked = _checked({**_DEFAULTS, **rules})
    exists = await conn.scalar(text("SELECT 1 FROM issuers WHERE id = :id"), {"id": issuer_id})
    unit_exists = await conn.scalar(text("SELECT 1 FROM units WHERE code = :code"), {"code": unit})
    if not exists:
        raise NotFound("no issuer has this id", message_fr="Aucun émetteur ne porte ce numéro.", issuer_id=issuer_id)
    if not unit_exists:
        raise InvalidProgrammeRules("unit: unknown unit", message_fr="unit : unité inconnue", field="unit")
    programme = await create_scheme_programme(conn, issuer_id=issuer_id, kind=kind, name=checked["name"], unit=unit)
    await _write_rules(conn, programme.id, checked)
    await breakage_account(conn, programme.id)
    created = await get_rules(conn, programme.id)
    await append(conn, event_type="programme.created",
                 payload={"programme_id": created.id, "issuer_id": issuer_id, "kind": kind, "unit": unit,
                          "rules": _audit_view(created)}, actor=actor)
    return created


async def update_programme(conn: AsyncConnection, programme_id: int, *, actor: str, **changes: Any) -> ProgrammeRules:
    """Change some rules; the audit event records each changed field before and after."""
    unknown = set(changes) - set(RULE_FIELDS)
    if unknown:
        raise InvalidProgrammeRules(f"unknown rules: {sorted(unknown)}", field=sorted(unknown)[0])
    before = await get_rules(conn, programme_id, for_update=True)
    current = {name: getattr(before, name) for name in RULE_FIELDS}
    checked = _checked({**current, **changes})
    await _write_rules(conn, programme_id, checked)
    after = await get_rules(conn, programme_id)
    old, new = _audit_view(before), _audit_view(after)
    changed = {name: {"before": old[name], "after": new[name]} for name in RULE_FIELDS if old[name] != new[name]}
    if changed:
        await append(conn, event_type="programme.changed", payload={"programme_id": programme_id, "changes": changed},
                     actor=actor)
    return after

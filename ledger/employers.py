"""Employers and works councils that buy vouchers for their staff.

An employer belongs to an issuer's scheme and is known by its SIRET (the 14-digit number of
its establishment, validated with python-stdnum). Its users have the role ``employer`` and
``users.employer_id`` naming it. This module never moves value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from stdnum.exceptions import ValidationError
from stdnum.fr import siret as stdnum_siret

from audit.chain import append
from ledger.errors import DomainError, InvalidInput, NotFound

NAME_LENGTH_MAX = 200
ADDRESS_LENGTH_MAX = 500


class InvalidSiret(DomainError):
    code = "invalid_siret"
    message = "The SIRET is not a valid 14-digit French establishment number."
    message_fr = "Le SIRET n'est pas un numéro d'établissement valide à 14 chiffres."


class EmployerExists(DomainError):
    code = "employer_exists"
    message = "An employer with this SIRET is already registered in this scheme."
    message_fr = "Un employeur avec ce SIRET est déjà inscrit dans ce réseau."


@dataclass(frozen=True, slots=True)
class Employer:
    id: int
    issuer_id: int
    name: str
    siret: str
    address: str
    created_at: datetime


def validate_siret(value: str) -> str:
    try:
        return stdnum_siret.validate(value)
    except ValidationError:
        raise InvalidSiret(siret=value) from None


async def create_employer(
    conn: AsyncConnection, *, issuer_id: int, name: str, siret: str, address: str = "", actor: str
) -> Employer:
    siret = validate_siret(siret)
    name, address = name.strip(), address.strip()
    if not 1 <= len(name) <= NAME_LENGTH_MAX or len(address) > ADDRESS_LENGTH_MAX:
        raise InvalidInput(f"a name has 1 to {NAME_LENGTH_MAX} characters, an address at most {ADDRESS_LENGTH_MAX}",
                           message_fr=f"un nom fait 1 à {NAME_LENGTH_MAX} caractères, une adresse {ADDRESS_LENGTH_MAX} au plus")
    if not await conn.scalar(text("SELECT 1 FROM issuers WHERE id = :id"), {"id": issuer_id}):
        raise NotFound("no issuer has this id", message_fr="Aucun émetteur ne porte ce numéro.", issuer_id=issuer_id)
    row = (await conn.execute(
        text(
            "INSERT INTO employers (issuer_id, name, siret, address) VALUES (:issuer_id, :name, :siret, :address) "
            "ON CONFLICT (issuer_id, siret) DO NOTHING RETURNING id, issuer_id, name, siret, address, created_at"
        ),
        {"issuer_id": issuer_id, "name": name, "siret": siret, "address": address},
    )).one_or_none()
    if row is None:
        raise EmployerExists(siret=siret)
    await append(conn, event_type="employer.created",
                 payload={"employer_id": row.id, "issuer_id": issuer_id, "name": name, "siret": siret}, actor=actor)
    return Employer(*row)


async def get_employer(conn: AsyncConnection, employer_id: int) -> Employer:
    row = (await conn.execute(
        text("SELECT id, issuer_id, name, siret, address, created_at FROM employers WHERE id = :id"), {"id": employer_id}
    )).one_or_none()
    if row is None:
        raise NotFound("no employer has this id", message_fr="Aucun employeur ne porte ce numéro.", employer_id=employer_id)
    return Employer(*row)


async def list_employers(conn: AsyncConnection, *, issuer_id: int | None = None) -> list[Employer]:
    rows = (await conn.execute(
        text("SELECT id, issuer_id, name, siret, address, created_at FROM employers "
             "WHERE CAST(:issuer_id AS bigint) IS NULL OR issuer_id = :issuer_id ORDER BY id"),
        {"issuer_id": issuer_id},
    )).all()
    return [Employer(*row) for row in rows]


async def attach_user(conn: AsyncConnection, *, user_id: int, employer_id: int, actor: str) -> None:
    """Make a user (role employer) act for an employer."""
    await get_employer(conn, employer_id)
    updated = await conn.execute(
        text("UPDATE users SET employer_id = :employer_id WHERE id = :id AND role = 'employer'"),
        {"employer_id": employer_id, "id": user_id},
    )
    if updated.rowcount != 1:
        raise InvalidInput("only a user with the role employer can act for an employer",
                           message_fr="seul un utilisateur de rôle employeur peut agir pour un employeur")
    await append(conn, event_type="employer.user_attached", payload={"employer_id": employer_id, "user_id": user_id},
                 actor=actor)


async def employer_of_user(conn: AsyncConnection, user_id: int) -> int | None:
    return await conn.scalar(text("SELECT employer_id FROM users WHERE id = :id"), {"id": user_id})

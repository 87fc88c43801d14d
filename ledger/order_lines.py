"""Order lines: who gets a voucher and for how much, typed in or uploaded as a spreadsheet export.

A CSV may come from any spreadsheet: UTF-8 (with or without BOM) or Windows-1252, separated by
commas, semicolons or tabs, amounts written ``50``, ``50.00``, ``50,00`` or ``1 234,50 €``.
Every line is checked and every bad line is reported with its line number and reason (in
English and French); a file with any bad line yields no lines at all. Pure: no database.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from ledger.errors import DomainError

LINES_MAX = 20_000
CSV_BYTES_MAX = 4 * 1024 * 1024
NAME_LENGTH_MAX = 200
EMAIL_LENGTH_MAX = 254
ERRORS_REPORTED_MAX = 500
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_AMOUNT = re.compile(r"^([-+]?)(\d{1,7})(?:[.,](\d{1,2}))?$")
_HEADERS = {
    "name": ("name", "nom", "beneficiary", "beneficiaire", "beneficiary_name", "nom_prenom", "prenom_nom",
             "nom_et_prenom", "prenom_et_nom", "full_name", "salarie", "employee"),
    "email": ("email", "e_mail", "mail", "courriel", "adresse_email", "adresse_e_mail", "adresse_mail",
              "email_address"),
    "amount": ("amount", "montant", "amount_eur", "montant_eur", "valeur", "value", "montant_du_cheque"),
}


@dataclass(frozen=True, slots=True)
class LineIn:
    beneficiary_name: str
    beneficiary_email: str | None
    amount_cents: int


@dataclass(frozen=True, slots=True)
class LineProblem:
    line: int  # the line number in the file (the header is line 1), or the position in a list
    field: str
    reason: str
    reason_fr: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "field": self.field, "reason": self.reason, "reason_fr": self.reason_fr}


class OrderLinesRefused(DomainError):
    code = "order_lines_refused"
    message = "Some order lines are not valid; nothing was saved. Correct them and send them again."
    message_fr = "Certaines lignes de la commande ne sont pas valides ; rien n'a été enregistré."

    def __init__(self, problems: list[LineProblem]) -> None:
        super().__init__(errors=[p.as_dict() for p in problems[:ERRORS_REPORTED_MAX]], error_count=len(problems))
        self.problems = problems


def _key(header: str) -> str:
    """A header as a bare key: "Montant (€)" → "montant", "Adresse e-mail" → "adresse_e_mail"."""
    plain = unicodedata.normalize("NFKD", header).encode("ascii", "ignore").decode().lower()
    plain = re.sub(r"\(.*?\)", "", plain)
    return re.sub(r"[^a-z0-9]+", "_", plain).strip("_")


def parse_amount(raw: str) -> int | None:
    """Signed cents from a written amount, or None if it is not one."""
    cleaned = raw.replace("€", "").replace("EUR", "").replace("\u00a0", "").replace("\u202f", "").replace(" ", "").strip()
    match = _AMOUNT.match(cleaned)
    if not match:
        return None
    sign, euros, cents = match.groups()
    value = int(euros) * 100 + int((cents or "0").ljust(2, "0"))
    return -value if sign == "-" else value


def check_lines(
    items: Iterable[tuple[int, str, str, str | int]], *, min_cents: int, max_cents: int
) -> list[LineIn]:
    """Lines from (line number, name, email, amount) items, where the amount is text to parse
    or already an int of cents; every problem is collected before refusing."""
    lines: list[LineIn] = []
    problems: list[LineProblem] = []
    for number, name, email, amount in items:
        name, email = (name or "").strip(), (email or "").strip()
        if not name:
            problems.append(LineProblem(number, "name", "the beneficiary's name is missing", "le nom du bénéficiaire manque"))
        elif len(name) > NAME_LENGTH_MAX:
            problems.append(LineProblem(number, "name", f"the name is longer than {NAME_LENGTH_MAX} characters",
                                        f"le nom dépasse {NAME_LENGTH_MAX} caractères"))
        if email and (len(email) > EMAIL_LENGTH_MAX or not _EMAIL.match(email)):
            problems.append(LineProblem(number, "email", f"{email!r} is not an email address",
                                        f"{email!r} n'est pas une adresse électronique"))
        cents = amount if isinstance(amount, int) else parse_amount(amount or "")
        if cents is None:
            problems.append(LineProblem(number, "amount", f"{amount!r} is not an amount in euros (e.g. 50 or 50,00)",
                                        f"{amount!r} n'est pas un montant en euros (ex. 50 ou 50,00)"))
        elif cents <= 0:
            problems.append(LineProblem(number, "amount", "the amount must be more than zero",
                                        "le montant doit être supérieur à zéro"))
        elif not min_cents <= cents <= max_cents:
            problems.append(LineProblem(
                number, "amount",
                f"{cents / 100:.2f} € is outside the programme's limits ({min_cents / 100:.2f} € to {max_cents / 100:.2f} €)",
                f"{cents / 100:.2f} € est hors des limites du programme ({min_cents / 100:.2f} € à {max_cents / 100:.2f} €)"))
        if not problems or problems[-1].line != number:
            lines.append(LineIn(name, email or None, cents))  # type: ignore[arg-type]
    if len(lines) + len({p.line for p in problems}) > LINES_MAX:
        problems.insert(0, LineProblem(0, "file", f"an order has at most {LINES_MAX} lines",
                                       f"une commande compte au plus {LINES_MAX} lignes"))
    if not problems and not lines:
        problems.append(LineProblem(0, "file", "there are no lines", "il n'y a aucune ligne"))
    if problems:
        raise OrderLinesRefused(problems)
    return lines


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Excel on Windows exports "CSV (separator: semicolon)" in Windows-1252.
        return data.decode("cp1252", errors="replace")


def parse_csv(data: bytes, *, min_cents: int, max_cents: int) -> list[LineIn]:
    """Lines of an uploaded CSV (header row: name/nom, email/courriel (optional), amount/montant)."""
    if len(data) > CSV_BYTES_MAX:
        raise OrderLinesRefused([LineProblem(0, "file", f"the file is larger than {CSV_BYTES_MAX // 1024 // 1024} MB",
                                             f"le fichier dépasse {CSV_BYTES_MAX // 1024 // 1024} Mo")])
    if b"\x00" in data:
        raise OrderLinesRefused([LineProblem(0, "file", "this is not a text (CSV) file", "ce n'est pas un fichier texte (CSV)")])
    content = _decode(data)
    if not content.strip():
        raise OrderLinesRefused([LineProblem(0, "file", "the file is empty", "le fichier est vide")])
    first = content.split("\n", 1)[0]
    delimiter = max((";", ",", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as error:
        raise OrderLinesRefused([LineProblem(1, "file", f"unreadable header: {error}", f"en-tête illisible : {error}")]) from None
    columns: dict[str, int] = {}
    for index, title in enumerate(header):
        for field, names in _HEADERS.items():
            if _key(title) in names and field not in columns:
                columns[field] = index
    missing = [field for field in ("name", "amount") if field not in columns]
    if missing:
        raise OrderLinesRefused([LineProblem(
            1, "header", f"the first line must name the columns; missing: {', '.join(missing)} "
                         "(accepted: name or nom, amount or montant, optional email or courriel)",
            f"la première ligne doit nommer les colonnes ; il manque : {', '.join(missing)} "
            "(acceptés : nom ou name, montant ou amount, courriel ou email facultatif)")])
    items: list[tuple[int, str, str, str]] = []
    problems: list[LineProblem] = []
    width = len(header)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            problems.append(LineProblem(reader.line_num, "file", f"unreadable line: {error}", f"ligne illisible : {error}"))
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > width and any(cell.strip() for cell in row[width:]):
            problems.append(LineProblem(reader.line_num, "file", f"{len(row)} columns where the header has {width}",
                                        f"{len(row)} colonnes alors que l'en-tête en a {width}"))
            continue
        cell = lambda field: row[columns[field]] if field in columns and columns[field] < len(row) else ""  # noqa: E731
        items.append((reader.line_num, cell("name"), cell("email"), cell("amount")))
    try:
        lines = check_lines(items, min_cents=min_cents, max_cents=max_cents)
    except OrderLinesRefused as refused:
        raise OrderLinesRefused(sorted(problems + refused.problems, key=lambda p: p.line)) from None
    if problems:
        raise OrderLinesRefused(problems)
    return lines

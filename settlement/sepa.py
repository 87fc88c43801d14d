"""SEPA credit transfer files (ISO 20022 pain.001.001.09) for a batch's payouts, via sepaxml.

One transfer per merchant; remittance text within 140 characters of the SEPA Latin character
set; IBAN and BIC checked with schwifty; the group header carries the number of transfers and
their control sum. The file is built from plain values and returns bytes: storing it is the
caller's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from sepaxml import SepaTransfer
from text_unidecode import unidecode

from settlement.errors import BankDetailsInvalid

SCHEMA = "pain.001.001.09"
REMITTANCE_LENGTH_MAX = 140
NAME_LENGTH_MAX = 70
END_TO_END_LENGTH_MAX = 35
# The SEPA Latin character set (EPC guidelines): what every bank in the zone must carry.
_NOT_SEPA = re.compile(r"[^A-Za-z0-9/\-?:().,'+ ]")


def sepa_text(value: str, length_max: int) -> str:
    """Transliterate to the SEPA Latin set, squeeze blanks, cut to ``length_max`` characters."""
    cleaned = _NOT_SEPA.sub(" ", unidecode(value))
    return " ".join(cleaned.split())[:length_max].strip()


def checked_iban(value: str | None, *, subject: str) -> str:
    try:
        return IBAN(value or "").compact
    except SchwiftyException as error:
        raise BankDetailsInvalid(f"{subject}: the IBAN is not valid ({error})",
                                 message_fr=f"{subject} : l'IBAN n'est pas valide.", subject=subject) from None


def checked_bic(value: str | None, *, subject: str) -> str | None:
    if not value:
        return None
    try:
        return str(BIC(value))
    except SchwiftyException as error:
        raise BankDetailsInvalid(f"{subject}: the BIC is not valid ({error})",
                                 message_fr=f"{subject} : le BIC n'est pas valide.", subject=subject) from None


@dataclass(frozen=True, slots=True)
class Debtor:
    name: str
    iban: str
    bic: str | None


@dataclass(frozen=True, slots=True)
class Credit:
    name: str
    iban: str
    bic: str | None
    amount_cents: int
    end_to_end_id: str
    remittance: str


def credit_transfer_file(*, message_id: str, debtor: Debtor, credits: list[Credit], execution_date: date,
                         created_at: datetime) -> bytes:
    """The pain.001.001.09 document paying every credit from the debtor's account."""
    config = {
        "name": sepa_text(debtor.name, NAME_LENGTH_MAX),
        "IBAN": checked_iban(debtor.iban, subject="issuer"),
        "currency": "EUR",
        "batch": True,
    }
    if bic := checked_bic(debtor.bic, subject="issuer"):
        config["BIC"] = bic
    document = SepaTransfer(config, schema=SCHEMA, clean=False)
    header = document._xml.find("CstmrCdtTrfInitn/GrpHdr")
    # A stable message id and creation time, so the bank can spot a file sent twice.
    header.find("MsgId").text = sepa_text(message_id, 35)
    header.find("CreDtTm").text = created_at.strftime("%Y-%m-%dT%H:%M:%S")
    for credit in credits:
        assert credit.amount_cents > 0, "a SEPA transfer moves a positive amount"
        payment = {
            "name": sepa_text(credit.name, NAME_LENGTH_MAX),
            "IBAN": checked_iban(credit.iban, subject=credit.name),
            "amount": credit.amount_cents,
            "execution_date": execution_date,
            "description": sepa_text(credit.remittance, REMITTANCE_LENGTH_MAX),
            "endtoend_id": sepa_text(credit.end_to_end_id, END_TO_END_LENGTH_MAX),
        }
        if bic := checked_bic(credit.bic, subject=credit.name):
            payment["BIC"] = bic
        document.add_payment(payment)
    # Validation against the XSD is done by the tests with the schema they ship.
    return document.export(validate=False)

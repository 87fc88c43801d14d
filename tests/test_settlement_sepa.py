"""The pain.001.001.09 writer: valid against the ISO 20022 schema shipped in tests/data."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from xml.etree import ElementTree

import pytest
import xmlschema

from settlement.errors import BankDetailsInvalid
from settlement.sepa import Credit, Debtor, credit_transfer_file, sepa_text

XSD = Path(__file__).parent / "data" / "pain.001.001.09.xsd"
NS = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"}
DEBTOR = Debtor("Association La Bulle d'Angoulême", "FR7630006000011234567890189", "AGRIFRPP")


def credits() -> list[Credit]:
    return [
        Credit("Librairie du Marché", "FR76 3000 4000 0312 3456 7890 143", "BNPAFRPP", 109_320, "B1-M1",
               "Circuit reversement novembre 2026 – Librairie du Marché « lot 1 » " + "x" * 200),
        Credit("Boulangerie Saint-Martial", "DE89370400440532013000", None, 5, "B1-M2", "Circuit 2026-11"),
    ]


def test_the_file_validates_against_the_iso_20022_schema_and_sums_its_transfers():
    xml = credit_transfer_file(message_id="CIRCUIT-1-2026-11", debtor=DEBTOR, credits=credits(),
                               execution_date=date(2026, 12, 3), created_at=datetime(2026, 12, 2, 9, 30))
    xmlschema.XMLSchema(str(XSD)).validate(xml.decode())
    root = ElementTree.fromstring(xml)
    assert root.find("p:CstmrCdtTrfInitn/p:GrpHdr/p:NbOfTxs", NS).text == "2"
    assert root.find("p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum", NS).text == "1093.25"
    amounts = [e.text for e in root.iterfind(".//p:CdtTrfTxInf/p:Amt/p:InstdAmt", NS)]
    assert amounts == ["1093.20", "0.05"]
    remittances = [e.text for e in root.iterfind(".//p:RmtInf/p:Ustrd", NS)]
    assert all(len(text) <= 140 for text in remittances)
    assert remittances[0].startswith("Circuit reversement novembre 2026 - Librairie du Marche lot 1 xxx")
    ibans = [e.text for e in root.iterfind(".//p:CdtrAcct/p:Id/p:IBAN", NS)]
    assert ibans == ["FR7630004000031234567890143", "DE89370400440532013000"]


def test_remittance_text_keeps_to_the_sepa_latin_set():
    assert sepa_text("Café « Ñandú » & Co; 50 € <ok>", 140) == "Cafe Nandu Co 50 EUR ok"
    assert len(sepa_text("é" * 300, 140)) == 140


@pytest.mark.parametrize("iban, bic", [("FR7630006000011234567890188", None), ("", None),
                                       ("DE89370400440532013000", "NOTABIC")])
def test_a_wrong_iban_or_bic_is_refused_before_any_file_exists(iban, bic):
    bad = Credit("Shop", iban, bic, 100, "B1-M9", "Circuit")
    with pytest.raises(BankDetailsInvalid):
        credit_transfer_file(message_id="X", debtor=DEBTOR, credits=[bad], execution_date=date(2026, 12, 3),
                             created_at=datetime(2026, 12, 2))

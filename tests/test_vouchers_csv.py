"""Reading staff lists the way spreadsheets export them."""

from __future__ import annotations

import pytest

from ledger.order_lines import LINES_MAX, LineIn, OrderLinesRefused, parse_csv

LIMITS = {"min_cents": 500, "max_cents": 30_000}


@pytest.mark.parametrize("header", [
    "Nom;Courriel;Montant", "NOM;E-mail;MONTANT (€)", "Nom et prénom;Adresse e-mail;Montant", "name;email;amount",
    "Montant;Nom;Courriel",
])
def test_header_names_in_french_or_english_in_any_order(header):
    columns = [c.strip().lower() for c in header.split(";")]
    values = {"name": "Zoé Martin", "email": "zoe@example.org", "amount": "45,50"}
    order = ["amount" if "ontant" in c or "mount" in c else "email" if "ail" in c or "ourriel" in c else "name"
             for c in columns]
    data = f"{header}\n{';'.join(values[field] for field in order)}\n".encode("cp1252")
    assert parse_csv(data, **LIMITS) == [LineIn("Zoé Martin", "zoe@example.org", 4550)]


def test_quoted_fields_blank_lines_and_a_bom_are_read_and_line_numbers_stay_true():
    data = '\ufeffname,amount\n"Dupont, Jean","1 234,5"\n\n"Durand, Marie",abc\n'.encode()
    with pytest.raises(OrderLinesRefused) as refused:
        parse_csv(data, min_cents=1, max_cents=10**7)
    assert [(p.line, p.field) for p in refused.value.problems] == [(4, "amount")]
    good = parse_csv('\ufeffname,amount\n"Dupont, Jean","1 234,5"\n\n'.encode(), min_cents=1, max_cents=10**7)
    assert good == [LineIn("Dupont, Jean", None, 123450)]


def test_an_order_has_at_most_twenty_thousand_lines():
    data = ("nom;montant\n" + "Ada;10\n" * (LINES_MAX + 1)).encode()
    with pytest.raises(OrderLinesRefused) as refused:
        parse_csv(data, **LIMITS)
    assert refused.value.problems[0].field == "file" and str(LINES_MAX) in refused.value.problems[0].reason

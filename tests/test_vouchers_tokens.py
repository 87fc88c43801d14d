"""Signed QR tokens and typed codes: the format holds, forgeries and typos are caught."""

from __future__ import annotations

import string
from datetime import datetime, timezone

import pytest
import qrcode
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.tokens import (
    CODE_ALPHABET,
    CODE_DATA_LENGTH,
    CODE_LENGTH,
    TOKEN_LENGTH,
    BadSignature,
    CodeCheckFailed,
    CodeMalformed,
    TokenMalformed,
    UnknownSigningKey,
    VoucherKey,
    base45_decode,
    base45_encode,
    code_checks,
    code_with_check,
    format_code,
    parse_code,
    read_token,
    sign_token,
    verify_token,
)

KEY = VoucherKey.generate()
EXPIRY = datetime(2027, 12, 31, 23, 0, tzinfo=timezone.utc)
codes_data = st.text(alphabet=CODE_ALPHABET, min_size=CODE_DATA_LENGTH, max_size=CODE_DATA_LENGTH)


@pytest.mark.parametrize(("raw", "encoded"), [
    (b"AB", "BB8"), (b"Hello!!", "%69 VD92EX0"), (b"base-45", "UJCLQE7W581"), (b"ietf!", "QED8WEX0"),
])
def test_base45_matches_the_rfc_9285_examples(raw, encoded):
    assert base45_encode(raw) == encoded
    assert base45_decode(encoded) == raw


@given(st.binary(max_size=200))
def test_base45_round_trips_any_bytes(raw):
    assert base45_decode(base45_encode(raw)) == raw


def test_a_token_fits_a_qr_code_of_version_10_or_less_at_level_q():
    token = sign_token(KEY, voucher_id=2**63, programme_id=2**31, expires_at=EXPIRY)
    assert len(token) == TOKEN_LENGTH == 132
    assert set(token) <= set(string.digits + string.ascii_uppercase + " $%*+-./:")  # QR alphanumeric mode
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_Q, version=None)
    qr.add_data(token)
    qr.make(fit=True)
    assert qr.version <= 10
    assert qr.data_list[0].mode == qrcode.util.MODE_ALPHA_NUM


def test_a_signed_token_verifies_and_carries_its_claims():
    token = sign_token(KEY, voucher_id=4242, programme_id=7, expires_at=EXPIRY)
    claims = verify_token(token, {KEY.key_id: KEY.public_bytes})
    assert (claims.voucher_id, claims.programme_id, claims.expires_at, claims.key_id) == (4242, 7, EXPIRY, KEY.key_id)


@settings(max_examples=200)
@given(position=st.integers(min_value=4, max_value=TOKEN_LENGTH - 1), symbol=st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"))
def test_any_altered_character_of_a_token_is_refused(position, symbol):
    token = sign_token(KEY, voucher_id=99, programme_id=3, expires_at=EXPIRY)
    altered = token[:position] + symbol + token[position + 1:]
    if altered == token:
        return
    with pytest.raises((BadSignature, TokenMalformed, UnknownSigningKey)):
        verify_token(altered, {KEY.key_id: KEY.public_bytes})


def test_a_token_signed_by_another_key_is_refused():
    other = VoucherKey.generate()
    token = sign_token(other, voucher_id=1, programme_id=1, expires_at=EXPIRY)
    with pytest.raises(UnknownSigningKey):
        verify_token(token, {KEY.key_id: KEY.public_bytes})
    forged_id = VoucherKey(KEY.key_id, other.private)  # claims our key id, signed with another key
    with pytest.raises(BadSignature):
        verify_token(sign_token(forged_id, voucher_id=1, programme_id=1, expires_at=EXPIRY), {KEY.key_id: KEY.public_bytes})


@pytest.mark.parametrize("junk", ["", "CV1:", "CV2:" + "0" * 128, "hello", "CV1:" + "0" * 127 + "a"])
def test_junk_is_not_a_token(junk):
    with pytest.raises(TokenMalformed):
        read_token(junk)


@settings(max_examples=60, deadline=None)
@given(codes_data)
def test_every_single_character_typo_in_a_code_is_caught(data):
    """Exhaustive over positions and replacement symbols, for any code hypothesis draws."""
    code = code_with_check(data)
    assert code_checks(code)
    for position in range(CODE_LENGTH):
        for symbol in CODE_ALPHABET:
            if symbol != code[position]:
                assert not code_checks(code[:position] + symbol + code[position + 1:]), (code, position, symbol)


@settings(max_examples=60, deadline=None)
@given(codes_data)
def test_every_swap_of_two_adjacent_characters_in_a_code_is_caught(data):
    code = code_with_check(data)
    for position in range(CODE_LENGTH - 1):
        a, b = code[position], code[position + 1]
        if a != b:
            assert not code_checks(code[:position] + b + a + code[position + 2:]), (code, position)


def test_the_check_catches_every_substitution_and_swap_whatever_the_other_symbols():
    """The check is linear: a change is caught iff weight × difference ≠ 0 (mod 31). Checked
    exhaustively over every position, every pair of symbols and every neighbour pair."""
    n = len(CODE_ALPHABET)
    for position in range(CODE_LENGTH):
        weight = position + 1
        for a in range(n):
            for b in range(n):
                if a != b:
                    assert weight * (a - b) % n != 0
                    if position < CODE_LENGTH - 1:
                        # swapping a (here) and b (next): the sum changes by (a - b)(w_next - w)
                        assert (a - b) * ((weight + 1) - weight) % n != 0


def test_a_code_is_read_the_way_people_type_it():
    code = code_with_check("0123456789A")
    typed = format_code(code).lower().replace("0", "o").replace("1", "l")
    assert parse_code(typed) == code
    assert parse_code(" " + format_code(code) + " ") == code
    with pytest.raises(CodeMalformed):
        parse_code(code[:-1])
    with pytest.raises(CodeMalformed):
        parse_code(code[:-1] + "U")
    wrong = code[:3] + ("2" if code[3] != "2" else "3") + code[4:]
    with pytest.raises(CodeCheckFailed):
        parse_code(wrong)


def test_the_verifier_written_in_docs_tokens_md_accepts_a_real_token():
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "tokens.md").read_text()
    source = page.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(source, "docs/tokens.md", "exec"), namespace)
    token = sign_token(KEY, voucher_id=123456789, programme_id=42, expires_at=EXPIRY)
    assert namespace["verify"](token, {KEY.key_id: KEY.public_bytes}) == (123456789, 42, int(EXPIRY.timestamp()))

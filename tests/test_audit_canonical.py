"""The canonical encoding is RFC 8785's, byte for byte, whichever encoder produced it."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.canonical import INTEGER_MAX, canonical

scalars = (st.none() | st.booleans() | st.text()
           | st.integers(-2 * INTEGER_MAX, 2 * INTEGER_MAX) | st.sampled_from([INTEGER_MAX, INTEGER_MAX + 1, -INTEGER_MAX, -INTEGER_MAX - 1])
           | st.floats(allow_nan=False, allow_infinity=False))
keys = st.text() | st.sampled_from(["\U0001f600", "\uffff", "\ue000", "é", "e", "\x00", "\ud800"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=20)


def _reference(value):
    try:
        return rfc8785.dumps(value)
    except ValueError as error:  # CanonicalizationError, or UnicodeEncodeError for a surrogate key
        return type(error)


def _ours(value):
    try:
        return canonical(value)
    except ValueError as error:  # CanonicalizationError, or UnicodeEncodeError for a surrogate key
        return type(error)


@settings(max_examples=1500, deadline=None)
@given(values)
def test_any_json_value_encodes_to_the_reference_bytes_or_the_same_refusal(value):
    assert _ours(value) == _reference(value)


def test_keys_beyond_the_basic_plane_sort_by_utf16_code_units():
    # U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FFFF; by code point it would sort after.
    assert canonical({"\uffff": 1, "\U0001f600": 2}) == '{"😀":2,"\uffff":1}'.encode()


def test_integers_beyond_double_precision_are_refused():
    for number in (INTEGER_MAX + 1, -INTEGER_MAX - 1):
        try:
            canonical({"n": number})
        except rfc8785.IntegerDomainError:
            continue
        raise AssertionError(f"{number} was encoded")


def test_a_lone_surrogate_is_refused_like_the_reference():
    assert _ours({"s": "\ud800"}) is _reference({"s": "\ud800"}) is rfc8785.CanonicalizationError
